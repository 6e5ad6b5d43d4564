-- Meta rows under a key the spec does not list: nothing syncs them, and the compat view would not show them.
SELECT m.{link}::text AS key, 'meta_keys' AS check,
       {meta_name} || ' has key ' || quote_literal(m.{key}) || ', which the spec does not list' AS detail
  FROM {meta} AS m
 WHERE {scope}
   AND m.{key} NOT IN ({names})
