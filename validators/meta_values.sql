-- One branch per meta column: the meta row must hold the legacy value (compared as a value of the column's type,
-- not as JSON text), and exist exactly when the legacy value is not NULL. Keys without a base row are
-- legacy_missing's to report.
SELECT l.{pk}::text AS key, 'meta_values' AS check,
       CASE WHEN m.{value} IS NULL
            THEN {column_name} || ' is set in legacy but ' || {meta_name} || ' has no ' || quote_literal({name})
                 || ' row'
            WHEN l.{column} IS NULL
            THEN {meta_name} || ' has a ' || quote_literal({name}) || ' row but legacy ' || {column_name}
                 || ' is NULL'
            ELSE {meta_name} || '[' || quote_literal({name}) || '] = ' || left(m.{value}::text, 100)
                 || ', legacy ' || {column_name} || ' = ' || left(to_jsonb(l.{column})::text, 100)
       END AS detail
  FROM {legacy} AS l
  JOIN {base} AS b ON b.{pk} = l.{pk} AND {base_scope}
  LEFT JOIN {meta} AS m ON m.{link} = l.{pk} AND m.{key} = {name} AND {meta_scope}
 WHERE {scope}
   AND (m.{value} IS NULL OR l.{column} IS NULL OR {differs})
   AND (m.{value} IS NOT NULL OR l.{column} IS NOT NULL)
