"""The Django app: registers the system checks and drops the flag reader when MIGRATOR or DATABASES change."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class MigratorConfig(AppConfig):  # type: ignore[misc]  # django ships no type hints
    name = "migrator.contrib.django"
    label = "migrator"
    verbose_name = "migrator"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from migrator.contrib.django import checks as migrator_checks
        from migrator.contrib.django.flags import reset

        checks.register(migrator_checks.check_settings)
        checks.register(migrator_checks.check_state, checks.Tags.database)

        def on_setting_changed(setting: str, **kwargs: object) -> None:
            if setting in ("MIGRATOR", "DATABASES"):
                reset()

        setting_changed.connect(on_setting_changed, weak=False, dispatch_uid="migrator-reset-flags")
