CREATE TABLE IF NOT EXISTS {table} (
    {pk} {pk_type} NOT NULL{default},
    {columns},
    CONSTRAINT {pk_name} PRIMARY KEY ({pk}),
    CONSTRAINT {check_name} CHECK ({discriminator} IN ({values}))
)
