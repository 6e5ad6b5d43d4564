-- One branch per variant and meta table: rows whose base row is gone. The foreign keys expand validates forbid
-- them, so finding one means a constraint was dropped or disabled (session_replication_role = replica).
SELECT c.{link}::text AS key, 'orphans' AS check,
       {child_name} || ' has a row for it but ' || {base_name} || ' has none' AS detail
  FROM {child} AS c
 WHERE {scope}
   AND NOT EXISTS (SELECT 1 FROM {base} AS b WHERE b.{pk} = c.{link} AND {base_scope})
