#!/bin/sh
# preflight.sh - is the database ready for this job? Checks, without
# writing anything, that the migration the job needs (migrate.sql) has run:
# the reports table must have its summary column. Exit 0 if so, 1 if not.
#   DB   the job's SQLite database (default ./reports.db)
DB=${DB:-./reports.db}
if [ ! -f "$DB" ]; then
    echo "preflight: no database at $DB (create it: sqlite3 $DB < schema.sql)" >&2
    exit 1
fi
# Wait up to 5 s for a writer holding the database; never write.
if out=$(sqlite3 -bail -cmd '.timeout 5000' "$DB" \
    'SELECT summary FROM reports LIMIT 0' 2>&1); then
    exit 0
fi
echo "$out" >&2
case $out in
*"no such column"*)
    echo "preflight: reports.summary is missing in $DB: run migrate.sql first" >&2 ;;
*)
    echo "preflight: could not check $DB" >&2 ;;
esac
exit 1
