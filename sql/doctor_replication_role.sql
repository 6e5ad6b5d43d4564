-- doctor (PostgreSQL 15+): may the current role SET session_replication_role (GRANT SET ON PARAMETER)?
SELECT has_parameter_privilege('session_replication_role', 'SET')
