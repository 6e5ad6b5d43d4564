SELECT {columns}
  FROM {base} AS b
{joins}
