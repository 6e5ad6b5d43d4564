-- One branch per split table with required columns. The split tables declare them NOT NULL, but a constraint
-- can be missing (a table created by hand, a constraint dropped to load data): the rows are what counts.
SELECT c.{key}::text AS key, 'required_fields' AS check,
       {table_name} || ': ' || concat_ws(', ', {null_columns}) || ' is NULL' AS detail
  FROM {table} AS c
 WHERE {scope} AND ({any_null})
