{name} AS (
    INSERT INTO {table} ({cols})
    SELECT {vals} FROM src AS s JOIN base_ins AS b ON b.{pk} = s.{pk}
     WHERE s.{disc} = {when}
     ORDER BY s.{pk}{on_conflict}
)
