SELECT c.reltuples::bigint AS estimate, pg_total_relation_size(c.oid) AS bytes
  FROM pg_class c WHERE c.oid = to_regclass({table})
