CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} USING {method} ({columns}){where}
