CREATE {unique}INDEX {concurrently}IF NOT EXISTS {name} ON {table} USING {method} ({columns}){where}
