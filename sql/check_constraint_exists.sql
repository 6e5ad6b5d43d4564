SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass({table}) AND conname = {name} AND convalidated >= {validated})
