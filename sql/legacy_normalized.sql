SELECT {columns}
  FROM {legacy} AS l
