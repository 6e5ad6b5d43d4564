SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass({index}) AND indisvalid)
