INSERT INTO {table} AS t ({all_cols}) VALUES ({vals})
        ON CONFLICT ({keys}) DO UPDATE SET ({target}) = ROW({excluded})
        WHERE ({current}) IS DISTINCT FROM ({excluded}){returning};
