-- Accept exactly the rows this validation reported; a row quarantined since stays unaccepted and blocks.
UPDATE {quarantine}
   SET accepted_at = now()
 WHERE migration = %(migration)s AND resolved_at IS NULL AND accepted_at IS NULL AND key = ANY (%(keys)s::text[])
