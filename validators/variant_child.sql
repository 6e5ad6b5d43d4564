-- One branch per variant: a base row of this variant needs its child row, or reads after switch-reads would
-- lose the variant's columns.
SELECT b.{pk}::text AS key, 'variant_child' AS check,
       {disc_name} || ' is ' || quote_literal({when}) || ' but ' || {variant_name} || ' has no row for it' AS detail
  FROM {base} AS b
 WHERE {scope}
   AND b.{disc} = {when}
   AND NOT EXISTS (SELECT 1 FROM {variant} AS c WHERE c.{link} = b.{pk} AND {child_scope})
