UPDATE {split} AS s SET ({cols}) = ROW({legacy_vals}) FROM {legacy} AS l
         WHERE s.{key} = {row_key} AND l.{pk} = {row_key} AND ({split_vals}) IS DISTINCT FROM ({legacy_vals});