"""The machinery phases and copy engines run on: Actions and their runner, session settings, retries, chunking."""
