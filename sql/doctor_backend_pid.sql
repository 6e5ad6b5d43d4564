-- doctor: which server process answers this statement (a transaction pooler hands out another one).
SELECT pg_backend_pid()
