-- One key range, both sides in one statement and so in one snapshot: the forward triggers change legacy and split
-- rows in the same transaction, so whatever committed state this sees is in step on both sides.
-- A row is cut into parts, one per split row it implies (base, its variant's child, each non-NULL meta value);
-- each part's hash_record_extended is summed. Equal sums mean equal multisets of split rows, except with
-- probability ~2^-64; sum, not XOR, so a part present twice does not cancel out.
SELECT l.rows, l.parts, l.hash, s.parts, s.hash
  FROM (SELECT count(*) AS rows, {legacy_parts} AS parts, {legacy_hash} AS hash
          FROM {legacy} AS l
         WHERE {scope} AND {not_quarantined}) AS l,
       (SELECT count(*) AS parts, coalesce(sum(p.h), 0) AS hash
          FROM ({split_parts}) AS p (h)) AS s
