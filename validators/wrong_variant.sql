-- One branch per variant: a child row in a variant table its base row does not belong to (a type change whose
-- old child survived). split_as_legacy would show columns the legacy row does not have.
SELECT c.{link}::text AS key, 'wrong_variant' AS check,
       {variant_name} || ' has a row for it but ' || {disc_name} || ' is '
       || coalesce(quote_literal(b.{disc}), 'NULL') AS detail
  FROM {variant} AS c
  JOIN {base} AS b ON b.{pk} = c.{link} AND {base_scope}
 WHERE {scope}
   AND b.{disc} IS DISTINCT FROM {when}
