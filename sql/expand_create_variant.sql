CREATE TABLE IF NOT EXISTS {table} (
    {link} {pk_type} NOT NULL,
    {columns},
    CONSTRAINT {pk_name} PRIMARY KEY ({link})
)
