SELECT hash_record_extended(ROW({fields}), 0) FROM {table} AS c WHERE {scope}
