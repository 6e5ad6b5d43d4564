ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({column}) REFERENCES {ref_table} ({ref_column}) ON DELETE {on_delete} NOT VALID
