/* test_classify.c - unit tests for classify.c: one real stderr sample per
 * failure family (psql, psycopg2, node-postgres, pgx, the sqlite3 CLI and
 * Python's sqlite3, the openai Python and Node SDKs, requests, curl, Python,
 * Node, Ruby and Go crashes, shells), the orderings a naive matcher gets
 * wrong, user rules over the built-ins, malformed rules files, exit and
 * signal rules, and hostile tails (NULs, broken UTF-8, 1 MiB of noise). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <cmocka.h>

#include "classify.h"

#define D FB_FAIL_DETERMINISTIC
#define T FB_FAIL_TRANSIENT
#define B FB_FAIL_BUDGET
#define U FB_FAIL_UNKNOWN

static fb_rules *builtin;

typedef struct sample {
    const char *what;
    int exit_status, term_signal;
    const char *tail;
    fb_fail_class cls;
    const char *rule;
} sample;

/* Node 20's report of an uncaught error, as the samples below end. */
#define NODE_END "}\n\nNode.js v20.20.2\n"

static const sample samples[] = {
    /* ---- PostgreSQL, deterministic ---- */
    {"psql 42703 in a script", 3, 0,
     "psql:migrate.sql:2: ERROR:  column \"summary\" of relation \"reports\" "
     "does not exist\n"
     "LINE 1: insert into reports(id, summary) values (1,'x')\n"
     "                                ^\n",
     D, "pg_undefined_object"},
    {"psycopg2 UndefinedColumn, a row that says timed out", 1, 0,
     "Traceback (most recent call last):\n"
     "  File \"/app/job.py\", line 41, in <module>\n"
     "    main()\n"
     "  File \"/app/job.py\", line 37, in main\n"
     "    cur.execute(\"INSERT INTO reports (id, summary) VALUES (%s, %s)\", "
     "(1, s))\n"
     "psycopg2.errors.UndefinedColumn: column \"summary\" of relation "
     "\"reports\" does not exist\n"
     "LINE 1: INSERT INTO reports (id, summary) VALUES (1, 'the call timed "
     "out')\n"
     "                                 ^\n\n",
     D, "pg_error_class"},
    {"node-postgres 42703 dump", 1, 0,
     "/app/node_modules/pg/lib/client.js:526\n"
     "          Error.captureStackTrace(err)\n"
     "                ^\n\n"
     "error: column \"summary\" of relation \"reports\" does not exist\n"
     "    at /app/node_modules/pg/lib/client.js:526:17\n"
     "    at process.processTicksAndRejections "
     "(node:internal/process/task_queues:95:5)\n"
     "    at async main (/app/job.mjs:12:3) {\n"
     "  length: 125,\n  severity: 'ERROR',\n  code: '42703',\n"
     "  detail: undefined,\n  hint: undefined,\n  position: '26',\n"
     "  internalPosition: undefined,\n  internalQuery: undefined,\n"
     "  where: undefined,\n  schema: undefined,\n  table: undefined,\n"
     "  column: undefined,\n  dataType: undefined,\n"
     "  constraint: undefined,\n  file: 'parse_target.c',\n"
     "  line: '1065',\n  routine: 'checkInsertTargets'\n" NODE_END,
     D, "pg_sqlstate"},
    {"pgx (Go) 42703", 1, 0,
     "2024/05/01 02:00:13 insert report: ERROR: column \"summary\" of "
     "relation \"reports\" does not exist (SQLSTATE 42703)\nexit status 1\n",
     D, "pg_sqlstate"},
    {"psql VERBOSITY=verbose 42703", 1, 0,
     "ERROR:  42703: column \"summary\" does not exist\n"
     "LINE 1: select summary from reports\n               ^\n"
     "LOCATION:  errorMissingColumn, parse_relation.c:3665\n",
     D, "pg_sqlstate"},
    {"psql 22P02 invalid input syntax", 3, 0,
     "psql:load.sql:7: ERROR:  invalid input syntax for type integer: "
     "\"abc\"\nLINE 1: select 'abc'::int\n               ^\n",
     D, "pg_data_exception"},
    {"psycopg2 23505, a key that says connection refused", 1, 0,
     "psycopg2.errors.UniqueViolation: duplicate key value violates unique "
     "constraint \"reports_body_key\"\n"
     "DETAIL:  Key (body)=(connection refused) already exists.\n",
     D, "pg_error_class"},
    {"psql 23502 not-null", 1, 0,
     "ERROR:  null value in column \"id\" of relation \"reports\" violates "
     "not-null constraint\nDETAIL:  Failing row contains (null, c, 1).\n",
     D, "pg_constraint"},
    {"pgx 0A000 feature not supported", 1, 0,
     "ERROR: FOR UPDATE is not allowed with aggregate functions (SQLSTATE "
     "0A000)\n",
     D, "pg_sqlstate"},
    {"psycopg2 28P01 beats connection failed", 1, 0,
     "psycopg2.OperationalError: connection to server at \"db\" (10.0.0.5), "
     "port 5432 failed: FATAL:  password authentication failed for user "
     "\"app\"\n",
     D, "pg_auth_failed"},
    {"psql 3D000 no such database", 2, 0,
     "psql: error: connection to server on socket "
     "\"/tmp/pgc/.s.PGSQL.5433\" failed: FATAL:  database \"nodb\" does not "
     "exist\n",
     D, "pg_no_database"},
    {"Rails PG::UndefinedTable", 1, 0,
     "/usr/lib/ruby/vendor_ruby/active_record/connection_adapters/"
     "postgresql_adapter.rb:894:in `exec_params': PG::UndefinedTable: "
     "ERROR:  relation \"reports\" does not exist "
     "(ActiveRecord::StatementInvalid)\n",
     D, "pg_error_class"},

    /* ---- PostgreSQL, transient ---- */
    {"psycopg2 could not connect, in a Traceback", 1, 0,
     "Traceback (most recent call last):\n"
     "  File \"/app/job.py\", line 8, in <module>\n"
     "    conn = psycopg2.connect(os.environ[\"DATABASE_URL\"])\n"
     "  File \"/usr/lib/python3/dist-packages/psycopg2/__init__.py\", line "
     "122, in connect\n"
     "    conn = _connect(dsn, connection_factory=connection_factory, "
     "**kwasync)\n"
     "psycopg2.OperationalError: could not connect to server: Connection "
     "refused\n"
     "\tIs the server running on host \"db\" (10.0.0.5) and accepting\n"
     "\tTCP/IP connections on port 5432?\n",
     T, "pg_unavailable"},
    {"psql connection refused (libpq 15)", 2, 0,
     "psql: error: connection to server at \"127.0.0.1\", port 5999 failed: "
     "Connection refused\n"
     "\tIs the server running on that host and accepting TCP/IP "
     "connections?\n",
     T, "pg_unavailable"},
    {"psql the database system is starting up", 2, 0,
     "psql: error: connection to server at \"db\" (10.0.0.5), port 5432 "
     "failed: FATAL:  the database system is starting up\n",
     T, "pg_unavailable"},
    {"psql 57P01 admin shutdown", 2, 0,
     "FATAL:  terminating connection due to administrator command\n"
     "server closed the connection unexpectedly\n"
     "\tThis probably means the server terminated abnormally\n"
     "\tbefore or while processing the request.\n"
     "connection to server was lost\n",
     T, "pg_unavailable"},
    {"psql 40001 serialization failure", 1, 0,
     "ERROR:  could not serialize access due to concurrent update\n", T,
     "pg_contention"},
    {"psql 40P01 deadlock", 1, 0,
     "ERROR:  deadlock detected\n"
     "DETAIL:  Process 11370 waits for ShareLock on transaction 728; blocked "
     "by process 11372.\n"
     "Process 11372 waits for ShareLock on transaction 727; blocked by "
     "process 11370.\n"
     "HINT:  See server log for query details.\n"
     "CONTEXT:  while updating tuple (0,2) in relation \"acct\"\n",
     T, "pg_contention"},
    {"pgx 53300 too many connections", 1, 0,
     "connect: FATAL: sorry, too many clients already (SQLSTATE 53300)\n", T,
     "pg_sqlstate"},
    {"psql 53100 disk full", 1, 0,
     "ERROR:  could not extend file \"base/16384/16385\": No space left on "
     "device\nHINT:  Check free disk space.\n",
     T, "pg_resources"},
    {"pgx 57P01", 1, 0,
     "FATAL: terminating connection due to administrator command (SQLSTATE "
     "57P01)\n",
     T, "pg_sqlstate"},
    {"node-postgres 08P01 code", 1, 0,
     "error: invalid frontend message type 0\n"
     "    at Parser.parseErrorMessage (/app/node_modules/pg-protocol/dist/"
     "parser.js:287:98) {\n"
     "  length: 65,\n  severity: 'FATAL',\n  code: '08P01',\n" NODE_END,
     T, "pg_sqlstate"},
    {"node-postgres Connection terminated unexpectedly", 1, 0,
     "Error: Connection terminated unexpectedly\n"
     "    at Connection.<anonymous> "
     "(/app/node_modules/pg/lib/client.js:132:73)\n"
     "    at Object.onceWrapper (node:events:632:28)\n\n"
     "Node.js v20.20.2\n",
     T, "pg_unavailable"},
    {"asyncpg connection lost", 1, 0,
     "asyncpg.exceptions.ConnectionDoesNotExistError: connection was closed "
     "in the middle of operation\n",
     T, "pg_error_class"},

    /* ---- MySQL ---- */
    {"mysql CLI 42S22", 1, 0,
     "ERROR 1054 (42S22) at line 1: Unknown column 'summary' in 'field "
     "list'\n",
     D, "mysql_sqlstate"},
    {"mysql CLI server down", 1, 0,
     "ERROR 2002 (HY000): Can't connect to local MySQL server through "
     "socket '/run/mysqld/mysqld.sock' (2)\n",
     T, "mysql_sqlstate"},

    /* ---- SQLite ---- */
    {"sqlite3 CLI no such column", 1, 0,
     "Parse error near line 2: no such column: summary\n"
     "  select summary from reports;\n"
     "         ^--- error here\n",
     D, "sqlite_schema"},
    {"sqlite3 CLI no such table", 1, 0,
     "Error: in prepare, no such table: nope\n", D, "sqlite_schema"},
    {"Python sqlite3 has no column named", 1, 0,
     "Traceback (most recent call last):\n"
     "  File \"/app/job.py\", line 20, in <module>\n"
     "    db.execute(\"INSERT INTO reports(id, summary) VALUES (?, ?)\", "
     "row)\n"
     "sqlite3.OperationalError: table reports has no column named summary\n",
     D, "sqlite_schema"},
    {"Python sqlite3 syntax error", 1, 0,
     "sqlite3.OperationalError: near \"selct\": syntax error\n", D,
     "sqlite_schema"},
    {"sqlite3 CLI UNIQUE constraint", 1, 0,
     "Error: stepping, UNIQUE constraint failed: reports.body (19)\n", D,
     "sqlite_constraint"},
    {"Python sqlite3 database is locked", 1, 0,
     "Traceback (most recent call last):\n"
     "  File \"/app/job.py\", line 22, in <module>\n"
     "    db.commit()\n"
     "sqlite3.OperationalError: database is locked\n",
     T, "sqlite_busy"},
    {"better-sqlite3 SQLITE_BUSY", 1, 0,
     "SqliteError: database is locked\n"
     "    at Database.exec (/app/node_modules/better-sqlite3/lib/methods/"
     "wrappers.js:9:14)\n"
     "    at file:///app/job.mjs:8:4 {\n"
     "  code: 'SQLITE_BUSY'\n" NODE_END,
     T, "sqlite_busy"},

    /* ---- HTTP and LLM SDKs, deterministic ---- */
    {"requests 404", 1, 0,
     "requests.exceptions.HTTPError: 404 Client Error: Not Found for url: "
     "http://127.0.0.1:39635/404\n",
     D, "http_client_error"},
    {"openai python 400", 1, 0,
     "openai.BadRequestError: Error code: 400 - {'error': {'message': "
     "\"This model's maximum context length is 128000 tokens. However, your "
     "messages resulted in 130512 tokens. Please reduce the length of the "
     "messages.\", 'type': 'invalid_request_error', 'param': 'messages', "
     "'code': 'context_length_exceeded'}}\n",
     D, "api_invalid_request"},
    {"openai python 401", 1, 0,
     "openai.AuthenticationError: Error code: 401 - {'error': {'message': "
     "'Incorrect API key provided: sk-proj-****abcd. You can find your API "
     "key at https://platform.openai.com/account/api-keys.', 'type': "
     "'invalid_request_error', 'param': None, 'code': 'invalid_api_key'}}\n",
     D, "api_invalid_request"},
    {"openai python 403", 1, 0,
     "openai.PermissionDeniedError: Error code: 403 - {'error': {'code': "
     "'unsupported_country_region_territory', 'message': 'Country, region, "
     "or territory not supported', 'param': None, 'type': "
     "'request_forbidden'}}\n",
     D, "http_client_error"},
    {"openai python 404", 1, 0,
     "openai.NotFoundError: Error code: 404 - {'error': {'message': 'The "
     "model `gpt-5-turbo` does not exist or you do not have access to it.', "
     "'type': 'invalid_request_error', 'param': None, 'code': "
     "'model_not_found'}}\n",
     D, "api_invalid_request"},
    {"openai python 422", 1, 0,
     "openai.UnprocessableEntityError: Error code: 422 - {'detail': "
     "[{'loc': ['body', 'messages'], 'msg': 'field required', 'type': "
     "'value_error.missing'}]}\n",
     D, "http_client_error"},
    {"openai node 400 dump", 1, 0,
     "file:///app/node_modules/openai/core/error.mjs:41\n"
     "            return new BadRequestError(status, error, message, "
     "headers);\n"
     "                   ^\n\n"
     "BadRequestError: 400 This model's maximum context length is 128000 "
     "tokens.\n"
     "    at APIError.generate "
     "(file:///app/node_modules/openai/core/error.mjs:41:20)\n"
     "    at OpenAI.makeStatusError "
     "(file:///app/node_modules/openai/client.mjs:287:32)\n"
     "    at async main (file:///app/job.mjs:8:3) {\n"
     "  status: 400,\n  headers: Headers {},\n  requestID: null,\n"
     "  error: {\n"
     "    message: \"This model's maximum context length is 128000 "
     "tokens.\",\n"
     "    type: 'invalid_request_error',\n    param: 'messages',\n"
     "    code: 'context_length_exceeded'\n  },\n"
     "  code: 'context_length_exceeded',\n  param: 'messages',\n"
     "  type: 'invalid_request_error'\n" NODE_END,
     D, "api_invalid_request"},
    {"curl -f 404", 22, 0, "curl: (22) The requested URL returned error: 404\n",
     D, "http_client_error"},
    {"urllib 403", 1, 0, "urllib.error.HTTPError: HTTP Error 403: Forbidden\n",
     D, "http_client_error"},

    /* ---- fusebox's own refusals ---- */
    {"openai node 429 retry_budget_exhausted dump", 1, 0,
     "RateLimitError: 429 job:acme/nightly is tripped: retry_budget: 3 "
     "upstream attempts of the same request failed\n"
     "    at APIError.generate "
     "(file:///app/node_modules/openai/core/error.mjs:59:20)\n"
     "    at async main (file:///app/job.mjs:8:3) {\n"
     "  status: 429,\n  headers: Headers {},\n  requestID: null,\n"
     "  error: {\n"
     "    message: 'job:acme/nightly is tripped: retry_budget: 3 upstream "
     "attempts of the same request failed',\n"
     "    type: 'retry_budget_exhausted',\n    param: null,\n"
     "    code: 'retry_budget_exhausted'\n  },\n"
     "  code: 'retry_budget_exhausted',\n  param: null,\n"
     "  type: 'retry_budget_exhausted'\n" NODE_END,
     B, "retry_budget_exhausted"},
    {"openai python 402 budget_exceeded", 1, 0,
     "openai.APIStatusError: Error code: 402 - {'error': {'message': "
     "'budget of job:acme/nightly exceeded: 5.00 USD/day limit, 4.98 spent, "
     "0.01 reserved by calls in flight, this call may cost up to 0.04', "
     "'type': 'budget_exceeded', 'param': None, 'code': 'budget_exceeded', "
     "'scope': 'job:acme/nightly', 'tenant': 'acme', 'period': 'day'}}\n",
     B, "budget_exceeded"},
    {"openai python 429 fuse_tripped", 1, 0,
     "openai.RateLimitError: Error code: 429 - {'error': {'message': "
     "'tenant:acme is tripped: tripped by hand', 'type': 'fuse_tripped', "
     "'param': None, 'code': 'fuse_tripped'}}\n",
     B, "fuse_tripped"},
    {"curl printing the gateway's body", 1, 0,
     "{\"error\":{\"message\":\"job:acme/nightly is tripped: retry_budget: "
     "retries passed 20% of the job's calls today (at least 10 "
     "allowed)\",\"type\":\"retry_budget_exhausted\"}}\n",
     B, "retry_budget_exhausted"},

    /* ---- runtimes ---- */
    {"Python SyntaxError", 1, 0,
     "  File \"/app/job.py\", line 12\n"
     "    print(\"total\", total\n"
     "         ^\n"
     "SyntaxError: '(' was never closed\n",
     D, "syntax_error"},
    {"Python ModuleNotFoundError", 1, 0,
     "Traceback (most recent call last):\n"
     "  File \"<string>\", line 1, in <module>\n"
     "ModuleNotFoundError: No module named 'psycopg2'\n",
     D, "import_error"},
    {"Python ImportError", 1, 0,
     "ImportError: cannot import name 'OpenAI' from 'openai' "
     "(/usr/lib/python3/dist-packages/openai/__init__.py)\n",
     D, "import_error"},
    {"Python TypeError", 1, 0,
     "TypeError: unsupported operand type(s) for +: 'int' and 'str'\n", D,
     "type_error"},
    {"Python NameError", 1, 0,
     "Traceback (most recent call last):\n"
     "  File \"<string>\", line 4, in <module>\n"
     "  File \"<string>\", line 3, in f\n"
     "NameError: name 'undefined_name' is not defined\n",
     D, "name_error"},
    {"Python AttributeError", 1, 0,
     "AttributeError: 'NoneType' object has no attribute 'choices'\n", D,
     "name_error"},
    {"Node SyntaxError", 1, 0,
     "[eval]:1\nfoo(\n    \n\n\nSyntaxError: Unexpected end of input\n"
     "    at makeContextifyScript (node:internal/vm:185:14)\n"
     "    at node:internal/process/execution:107:22\n\n"
     "Node.js v20.20.2\n",
     D, "syntax_error"},
    {"Node ReferenceError", 1, 0,
     "[eval]:1\nundefinedFn()\n^\n\n"
     "ReferenceError: undefinedFn is not defined\n"
     "    at [eval]:1:1\n"
     "    at runScriptInThisContext (node:internal/vm:209:10)\n\n"
     "Node.js v20.20.2\n",
     D, "name_error"},
    {"Node TypeError", 1, 0,
     "[eval]:1\nnull.x\n     ^\n\n"
     "TypeError: Cannot read properties of null (reading 'x')\n"
     "    at [eval]:1:6\n\nNode.js v20.20.2\n",
     D, "type_error"},
    {"Node Cannot find module", 1, 0,
     "node:internal/modules/cjs/loader:1210\n  throw err;\n  ^\n\n"
     "Error: Cannot find module 'pg'\nRequire stack:\n- /app/job.js\n"
     "    at Module._resolveFilename "
     "(node:internal/modules/cjs/loader:1207:15)\n"
     "    at Module._load (node:internal/modules/cjs/loader:1038:27) {\n"
     "  code: 'MODULE_NOT_FOUND',\n  requireStack: [ '/app/job.js' "
     "]\n" NODE_END,
     D, "import_error"},
    {"Ruby NoMethodError", 1, 0,
     "/app/job.rb:14:in `block in <main>': undefined method `fetch' for "
     "nil:NilClass (NoMethodError)\n"
     "\tfrom /app/job.rb:10:in `each'\n"
     "\tfrom /app/job.rb:10:in `<main>'\n",
     D, "name_error"},
    {"Ruby LoadError", 1, 0,
     "<internal:/usr/lib/ruby/3.1.0/rubygems/core_ext/kernel_require.rb>:85:"
     "in `require': cannot load such file -- pg (LoadError)\n"
     "\tfrom <internal:/usr/lib/ruby/3.1.0/rubygems/core_ext/"
     "kernel_require.rb>:85:in `require'\n"
     "\tfrom /app/job.rb:1:in `<main>'\n",
     D, "import_error"},
    {"Go runtime error panic", 1, 0,
     "panic: runtime error: invalid memory address or nil pointer "
     "dereference\n"
     "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 "
     "pc=0x4a1b2c]\n\n"
     "goroutine 1 [running]:\nmain.summarize(0x0)\n"
     "\t/app/main.go:42 +0x2c\nmain.main()\n\t/app/main.go:17 +0x65\n"
     "exit status 2\n",
     D, "go_runtime_panic"},
    {"bash command not found (exit 127)", 127, 0,
     "bash: line 1: jq: command not found\n", D, "command_not_found"},
    {"dash not found in a pipeline", 1, 0, "sh: 1: jq: not found\n", D,
     "command_not_found"},
    {"not executable (exit 126)", 126, 0, "bash: ./job.sh: Permission denied\n",
     D, "not_executable"},

    /* ---- network, timeouts, servers ---- */
    {"openai node ECONNREFUSED dump", 1, 0,
     "APIConnectionError: Connection error.\n"
     "    at OpenAI.makeRequest "
     "(file:///app/node_modules/openai/client.mjs:434:19)\n"
     "    at async file:///app/job.mjs:3:1 {\n"
     "  status: undefined,\n  headers: undefined,\n  type: undefined,\n"
     "  cause: TypeError: fetch failed\n"
     "      at node:internal/deps/undici/undici:14976:13 {\n"
     "    [cause]: Error: connect ECONNREFUSED 127.0.0.1:5999\n"
     "        at TCPConnectWrap.afterConnect [as oncomplete] "
     "(node:net:1611:16) {\n"
     "      errno: -111,\n      code: 'ECONNREFUSED',\n"
     "      syscall: 'connect',\n      address: '127.0.0.1',\n"
     "      port: 5999\n    }\n  }\n" NODE_END,
     T, "connection_refused"},
    {"Python ConnectionResetError", 1, 0,
     "ConnectionResetError: [Errno 104] Connection reset by peer\n", T,
     "connection_reset"},
    {"requests ReadTimeout", 1, 0,
     "requests.exceptions.ReadTimeout: HTTPConnectionPool(host='127.0.0.1', "
     "port=39635): Read timed out. (read timeout=0.2)\n",
     T, "timeout"},
    {"Node ETIMEDOUT", 1, 0,
     "Error: connect ETIMEDOUT 10.0.0.5:443\n"
     "    at TCPConnectWrap.afterConnect [as oncomplete] "
     "(node:net:1555:16) {\n"
     "  errno: -110,\n  code: 'ETIMEDOUT',\n  syscall: 'connect',\n"
     "  address: '10.0.0.5',\n  port: 443\n" NODE_END,
     T, "timeout"},
    {"openai python 429 rate limit", 1, 0,
     "openai.RateLimitError: Error code: 429 - {'error': {'message': 'Rate "
     "limit reached for gpt-4o-mini in organization org-x on requests per "
     "min (RPM): Limit 500, Used 500, Requested 1. Please try again in "
     "120ms.', 'type': 'requests', 'param': None, 'code': "
     "'rate_limit_exceeded'}}\n",
     T, "api_rate_limited"},
    {"openai python APIConnectionError", 1, 0,
     "openai.APIConnectionError: Connection error.\n", T, "api_unreachable"},
    {"openai python APITimeoutError", 1, 0,
     "openai.APITimeoutError: Request timed out.\n", T, "api_unreachable"},
    {"openai python 500", 1, 0,
     "openai.InternalServerError: Error code: 500 - {'error': {'message': "
     "'The server had an error while processing your request. Sorry about "
     "that!', 'type': 'server_error', 'param': None, 'code': None}}\n",
     T, "api_server_error"},
    {"openai node 503 dump", 1, 0,
     "InternalServerError: 503 upstream unavailable\n"
     "    at APIError.generate "
     "(file:///app/node_modules/openai/core/error.mjs:62:20)\n"
     "    at async main (file:///app/job.mjs:8:3) {\n"
     "  status: 503,\n  headers: Headers {},\n  requestID: null,\n"
     "  error: undefined,\n  code: undefined,\n  param: undefined,\n"
     "  type: undefined\n" NODE_END,
     T, "http_server_error"},
    {"openai node connection timeout", 1, 0,
     "APIConnectionTimeoutError: Request timed out.\n"
     "    at OpenAI.makeRequest "
     "(file:///app/node_modules/openai/client.mjs:432:23)\n"
     "    at async main (file:///app/job.mjs:7:3) {\n"
     "  status: undefined,\n  type: undefined\n" NODE_END,
     T, "api_unreachable"},
    {"requests 502", 1, 0,
     "requests.exceptions.HTTPError: 502 Server Error: Bad Gateway for url: "
     "https://api.example.com/v1/items\n",
     T, "http_server_error"},
    {"curl -f 504", 22, 0, "curl: (22) The requested URL returned error: 504\n",
     T, "http_server_error"},
    {"anthropic python 529 overloaded", 1, 0,
     "anthropic.InternalServerError: Error code: 529 - {'type': 'error', "
     "'error': {'type': 'overloaded_error', 'message': 'Overloaded'}}\n",
     T, "api_server_error"},
    {"google ServiceUnavailable", 1, 0,
     "google.api_core.exceptions.ServiceUnavailable: 503 The service is "
     "currently unavailable.\n",
     T, "http_server_error"},
    {"Node fetch failed", 1, 0,
     "node:internal/deps/undici/undici:14976\n"
     "      Error.captureStackTrace(err);\n            ^\n\n"
     "TypeError: fetch failed\n"
     "    at node:internal/deps/undici/undici:14976:13 {\n"
     "  [cause]: Error: other side closed\n"
     "      at Socket.onSocketEnd (node:internal/deps/undici/undici:8280:26) "
     "{\n"
     "    code: 'UND_ERR_SOCKET'\n  }\n" NODE_END,
     T, "connection_reset"},

    {"curl cannot connect", 7, 0,
     "curl: (7) Failed to connect to localhost port 8080 after 0 ms: "
     "Couldn't connect to server\n",
     T, "curl_network"},
    {"Go dial without DNS", 1, 0,
     "2024/05/01 02:00:13 dial tcp: lookup db on 127.0.0.11:53: no such "
     "host\nexit status 1\n",
     T, "network_unreachable"},

    /* ---- exit statuses and signals ---- */
    {"EX_TEMPFAIL", 75, 0, "", T, "ex_tempfail"},
    {"EX_DATAERR", 65, 0, "", D, "ex_dataerr"},
    {"EX_CONFIG", 78, 0, "", D, "ex_config"},
    {"SIGKILL (OOM killer)", -1, 9, "", T, "killed"},
    {"exit 137 from a shell", 137, 0, "", T, "killed"},
    {"SIGSEGV", -1, 11, "", D, "crashed"},
    {"SIGTERM", -1, 15, "", T, "terminated"},
};

static void test_sample(void **state)
{
    const sample *s = *state;
    fb_verdict v;
    fb_classify(builtin, s->exit_status, s->term_signal, s->tail,
                strlen(s->tail), &v);
    if (v.cls != s->cls || strcmp(v.rule, s->rule) != 0)
        print_error("%s: got %s/%s (matched \"%s\"), want %s/%s\n", s->what,
                    fb_fail_class_name(v.cls), v.rule, v.matched,
                    fb_fail_class_name(s->cls), s->rule);
    assert_int_equal(v.cls, s->cls);
    assert_string_equal(v.rule, s->rule);
    assert_true(v.matched[0] != '\0');
}

/* ---- helpers ------------------------------------------------------------ */

static fb_verdict classify_text(const fb_rules *r, const char *text)
{
    fb_verdict v;
    fb_classify(r, 1, 0, text, strlen(text), &v);
    return v;
}

static void expect(const fb_rules *r, const char *text, fb_fail_class cls,
                   const char *rule)
{
    fb_verdict v = classify_text(r, text);
    if (v.cls != cls || strcmp(v.rule, rule) != 0)
        print_error("got %s/%s (matched \"%s\"), want %s/%s\n",
                    fb_fail_class_name(v.cls), v.rule, v.matched,
                    fb_fail_class_name(cls), rule);
    assert_int_equal(v.cls, cls);
    assert_string_equal(v.rule, rule);
}

/* Valid UTF-8, no control bytes, no blank at either end. */
static void assert_printable(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    if (n > 0) {
        assert_true(p[0] != ' ' && p[0] != '\t');
        assert_true(p[n - 1] != ' ' && p[n - 1] != '\t');
    }
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t k = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        assert_true(c >= 0x20 || c == '\t');
        assert_true(c != 0x7f);
        assert_true(c < 0x80 || (c >= 0xc2 && c <= 0xf4));
        assert_true(i + k <= n);
        for (size_t j = 1; j < k; j++)
            assert_int_equal(p[i + j] & 0xc0, 0x80);
        i += k;
    }
}

static fb_rules *with_user_rules(const char *text)
{
    char err[256];
    fb_rules *r = fb_rules_new();
    assert_non_null(r);
    assert_int_equal(fb_rules_load_text(r, text, strlen(text), "user.rules",
                                        err, sizeof err),
                     FB_OK);
    assert_string_equal(err, "");
    return r;
}

/* ---- ordering ----------------------------------------------------------- */

static void test_last_error_wins(void **state)
{
    (void)state;
    /* A config dump full of timeouts, then the real error. */
    expect(builtin,
           "config: {'connect_timeout': 30, 'statement_timeout': '60s', "
           "'readTimeout': 10}\n"
           "INFO retrying after ReadTimeout: Read timed out. (read "
           "timeout=10)\n"
           "  File \"/app/job.py\", line 3\n"
           "    if x = 1:\n"
           "         ^\n"
           "SyntaxError: invalid syntax\n",
           D, "syntax_error");
    /* A deterministic error logged and handled, then a transient one. */
    expect(builtin,
           "WARNING: skipped row 12: sqlite3.OperationalError: no such "
           "column: legacy_id\n"
           "sqlite3.OperationalError: database is locked\n",
           T, "sqlite_busy");
    /* urllib3 retried a refused connection, then the schema was wrong. */
    expect(builtin,
           "WARNING:urllib3.connectionpool:Retrying (Retry(total=2, "
           "connect=None, read=None, redirect=None, status=None)) after "
           "connection broken by 'NewConnectionError(\"Failed to establish a "
           "new connection: [Errno 111] Connection refused\")': /v1/chat\n"
           "psycopg2.errors.UndefinedTable: relation \"reports\" does not "
           "exist\n"
           "LINE 1: INSERT INTO reports VALUES (1)\n"
           "                    ^\n",
           D, "pg_error_class");
    /* The handler's own bug is what fails the job. */
    expect(builtin,
           "psycopg2.OperationalError: could not connect to server: "
           "Connection refused\n\n"
           "During handling of the above exception, another exception "
           "occurred:\n\n"
           "Traceback (most recent call last):\n"
           "  File \"/app/job.py\", line 14, in <module>\n"
           "    retry_later(job)\n"
           "NameError: name 'retry_later' is not defined\n",
           D, "name_error");
}

static void test_same_line_order(void **state)
{
    (void)state;
    /* A 429 that waiting does not cure. */
    expect(builtin,
           "openai.RateLimitError: Error code: 429 - {'error': {'message': "
           "'You exceeded your current quota, please check your plan and "
           "billing details.', 'type': 'insufficient_quota', 'param': None, "
           "'code': 'insufficient_quota'}}\n",
           D, "insufficient_quota");
    /* An HTML error page fed to JSON.parse is not a bug in the job. */
    expect(builtin,
           "SyntaxError: Unexpected token '<', \"<html>\" is not valid JSON\n"
           "    at JSON.parse (<anonymous>)\n",
           T, "bad_json_reply");
    expect(builtin,
           "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 "
           "(char 0)\n",
           T, "bad_json_reply");
    /* A dotted SQL error class is not Python's SyntaxError. */
    expect(builtin,
           "sqlalchemy.exc.ProgrammingError: (psycopg2.errors.SyntaxError) "
           "syntax error at or near \"SELCT\"\n",
           D, "pg_error_class");
    /* FileNotFoundError is not the openai NotFoundError. */
    expect(builtin,
           "FileNotFoundError: [Errno 2] No such file or directory: "
           "'input.csv'\n",
           D, "file_not_found");
    /* A Unix socket that is not there yet is not a missing file. */
    expect(builtin, "Error: connect ENOENT /var/run/postgresql/.s.PGSQL.5432\n",
           T, "socket_missing");
    /* A name that merely contains an errno name. */
    expect(builtin, "deploy: CodePipeline step finished\n", U, "unknown");
}

static void test_evidence_free_lines(void **state)
{
    (void)state;
    /* Frames that mention timeouts decide nothing. */
    expect(builtin,
           "Error: job failed: 3 rows rejected\n"
           "    at withTimeout (/app/lib/retry.js:10:11)\n"
           "    at async main (/app/job.mjs:5:3)\n",
           U, "unknown");
    /* SQLAlchemy echoes the statement and its values after the error. */
    expect(builtin,
           "sqlalchemy.exc.ProgrammingError: (psycopg2.errors.UndefinedColumn) "
           "column \"summary\" of relation \"reports\" does not exist\n"
           "LINE 1: INSERT INTO reports (id, summary) VALUES (%(id)s, "
           "%(summary)s)\n"
           "                                 ^\n\n"
           "[SQL: INSERT INTO reports (id, summary) VALUES (%(id)s, "
           "%(summary)s)]\n"
           "[parameters: {'id': 1, 'summary': 'the upstream call timed out, "
           "connection refused'}]\n"
           "(Background on this error at: https://sqlalche.me/e/20/f405)\n",
           D, "pg_error_class");
    /* The sqlite3 CLI echoes the statement, literals included. */
    expect(builtin,
           "Parse error near line 3: no such table: log\n"
           "  insert into log(msg) values('upstream timed out');\n"
           "              ^--- error here\n",
           D, "sqlite_schema");
}

static void test_status_before_text(void **state)
{
    fb_verdict v;
    const char *t = "sqlite3.OperationalError: no such column: x\n";
    (void)state;
    fb_classify(builtin, 75, 0, t, strlen(t), &v);
    assert_int_equal(v.cls, T);
    assert_string_equal(v.rule, "ex_tempfail");
    assert_string_equal(v.matched, "exit status 75");
    fb_classify(builtin, -1, 9, t, strlen(t), &v);
    assert_string_equal(v.rule, "killed");
    assert_string_equal(v.matched, "killed by signal 9 (SIGKILL)");
    /* An exit status with no rule leaves it to the text. */
    fb_classify(builtin, 1, 0, t, strlen(t), &v);
    assert_string_equal(v.rule, "sqlite_schema");
    /* Signal rules do not look at exit statuses, nor the reverse. */
    fb_classify(builtin, 9, 0, "", 0, &v);
    assert_int_equal(v.cls, U);
    fb_classify(builtin, -1, 75, "", 0, &v);
    assert_int_equal(v.cls, U);
}

/* ---- user rules --------------------------------------------------------- */

static void test_user_rules_first(void **state)
{
    (void)state;
    fb_rules *r = with_user_rules(
        "# our migrations run while jobs run: a missing column heals\n"
        "transient  column_migrating  no such column\n"
        "transient  dataerr_is_ours   exit=65\n"
        "deterministic vendor_quota   ^VENDOR-E42\n");
    expect(r, "sqlite3.OperationalError: no such column: summary\n", T,
           "column_migrating");
    expect(r, "VENDOR-E42 quota closed for today\n", D, "vendor_quota");
    /* Built-ins still apply to everything else. */
    expect(r, "sqlite3.OperationalError: no such table: reports\n", D,
           "sqlite_schema");
    fb_verdict v;
    fb_classify(r, 65, 0, NULL, 0, &v);
    assert_int_equal(v.cls, T);
    assert_string_equal(v.rule, "dataerr_is_ours");
    fb_rules_free(r);
}

static void test_later_file_first(void **state)
{
    char err[128];
    const char *b = "budget b_rule ECONNRESET\n";
    (void)state;
    fb_rules *r = with_user_rules("deterministic a_rule ECONNRESET\n");
    expect(r, "Error: read ECONNRESET\n", D, "a_rule");
    assert_int_equal(fb_rules_load_text(r, b, strlen(b), NULL, err, sizeof err),
                     FB_OK);
    expect(r, "Error: read ECONNRESET\n", B, "b_rule");
    fb_rules_free(r);
}

static void test_user_ignore(void **state)
{
    (void)state;
    fb_rules *r = with_user_rules("ignore our_retry_log ^WARN retry:\n");
    const char *t = "psycopg2.errors.UndefinedColumn: column \"x\" does not "
                    "exist\n"
                    "WARN retry: connection refused by pgbouncer, again\n";
    expect(builtin, t, T, "connection_refused");
    expect(r, t, D, "pg_error_class");
    fb_rules_free(r);
}

static void test_signals_and_lists(void **state)
{
    fb_verdict v;
    (void)state;
    fb_rules *r = with_user_rules("transient pipe signal=SIGPIPE,hup,3\n"
                                  "deterministic codes exit=0,2,255\n"
                                  "budget rt signal=40\n");
    fb_classify(r, -1, 13, NULL, 0, &v);
    assert_string_equal(v.rule, "pipe");
    assert_string_equal(v.matched, "killed by signal 13 (SIGPIPE)");
    fb_classify(r, -1, 1, NULL, 0, &v);
    assert_string_equal(v.rule, "pipe");
    fb_classify(r, -1, 3, NULL, 0, &v);
    assert_string_equal(v.rule, "pipe");
    fb_classify(r, 255, 0, NULL, 0, &v);
    assert_string_equal(v.rule, "codes");
    fb_classify(r, 2, 0, NULL, 0, &v);
    assert_string_equal(v.rule, "codes");
    fb_classify(r, -1, 40, NULL, 0, &v);
    assert_int_equal(v.cls, B);
    assert_string_equal(v.matched, "killed by signal 40");
    fb_classify(r, 3, 0, NULL, 0, &v);
    assert_int_equal(v.cls, U);
    fb_rules_free(r);
}

static void test_load_file(void **state)
{
    char path[] = "/tmp/fusebox-test-rules-XXXXXX", err[256];
    /* A BOM, CRLF line ends, comments, tabs. */
    const char text[] = "\xef\xbb\xbf# site rules\r\n"
                        "\r\n"
                        "transient\tnightly_lock\tlock file busy\r\n"
                        "   # indented comment\r\n"
                        "oops\r\n";
    (void)state;
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof text - 1),
                     (ssize_t)sizeof text - 1);
    close(fd);
    fb_rules *r = fb_rules_new();
    assert_int_equal(fb_rules_load_file(r, path, err, sizeof err), FB_EINVAL);
    char want[256];
    snprintf(want, sizeof want, "%s:5: expected CLASS NAME PATTERN", path);
    assert_string_equal(err, want);
    expect(r, "lock file busy\n", U, "unknown");

    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, sizeof text - 7),
                     (ssize_t)sizeof text - 7);
    close(fd);
    assert_int_equal(fb_rules_load_file(r, path, err, sizeof err), FB_OK);
    assert_string_equal(err, "");
    expect(r, "LOCK FILE BUSY (pid 42)\r\n", T, "nightly_lock");

    /* Too large. */
    fd = open(path, O_WRONLY | O_TRUNC);
    char *big = malloc((1 << 20) + 1);
    assert_non_null(big);
    memset(big, '#', (1 << 20) + 1);
    assert_int_equal(write(fd, big, (1 << 20) + 1), (1 << 20) + 1);
    close(fd);
    free(big);
    assert_int_equal(fb_rules_load_file(r, path, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "larger than"));

    unlink(path);
    assert_int_equal(fb_rules_load_file(r, path, err, sizeof err), FB_EIO);
    snprintf(want, sizeof want, "%s: No such file or directory", path);
    assert_string_equal(err, want);
    fb_rules_free(r);
}

/* ---- malformed rules ---------------------------------------------------- */

static const struct {
    const char *text;
    size_t len; /* 0: strlen */
    const char *err;
} bad_rules[] = {
    {"deterministic lonely\n", 0, "t.rules:1: expected CLASS NAME PATTERN"},
    {"# c\n\nfatal x y\n", 0,
     "t.rules:3: unknown class 'fatal' (deterministic, transient, budget or "
     "ignore)"},
    {"Transient x y\n", 0,
     "t.rules:1: unknown class 'Transient' (deterministic, transient, "
     "budget or ignore)"},
    {"transient bad/name y\n", 0,
     "t.rules:1: bad rule name 'bad/name' (1-63 of A-Z a-z 0-9 _ . -)"},
    {"transient "
     "a_name_that_is_far_too_long_to_print_next_to_a_verdict_for_humans_ok "
     "y\n",
     0, NULL},
    {"transient ok x\ntransient x (unclosed\n", 0, "t.rules:2: bad regex: "},
    {"transient x exit=256\n", 0,
     "t.rules:1: bad exit status '256' (exit=N[,N...], N 0-255)"},
    {"transient x exit=\n", 0, "t.rules:1: bad exit status ''"},
    {"transient x exit=1,,2\n", 0, "t.rules:1: bad exit status ''"},
    {"transient x exit=-1\n", 0, "t.rules:1: bad exit status '-1'"},
    {"transient x exit=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17\n", 0,
     "t.rules:1: more than 16 codes in one rule"},
    {"transient x signal=SIGFOO\n", 0, "t.rules:1: unknown signal 'SIGFOO'"},
    {"transient x signal=0\n", 0, "t.rules:1: unknown signal '0'"},
    {"ignore x exit=1\n", 0,
     "t.rules:1: an ignore rule takes a regex, not exit="},
    {"transient x (a)\\1\n", 0, "t.rules:1: back-references are not supported"},
    {"transient x ((a{1,100}){1,100}){1,100}\n", 0,
     "t.rules:1: too complex: its repeats expand it too far"},
    {"transient x a{99999}\n", 0, "t.rules:1: a repeat count is too large"},
    {"transient x (a?){300}\n", 0, "t.rules:1: a repeat count is too large"},
    {"transient x (a?){200}(b?){200}\n", 0,
     "t.rules:1: too complex: its repeats expand it too far"},
    /* Each + doubles what it repeats (found by fuzzing: out of memory). */
    {"transient x ((((((((((ab)+)+)+)+)+)+)+)+)+)+)+\n", 0,
     "t.rules:1: too complex: its repeats expand it too far"},
    /* A repeat of a repeat, and empty alternatives (found by fuzzing:
     * "(||...||ab)++" took glibc's regcomp over 10 s). */
    {"transient x (ab)++\n", 0,
     "t.rules:1: a repeat of a repeat (like a++ or a*{2}) is not supported"},
    {"transient x a*{2}\n", 0,
     "t.rules:1: a repeat of a repeat (like a++ or a*{2}) is not supported"},
    {"transient x a{2}?\n", 0,
     "t.rules:1: a repeat of a repeat (like a++ or a*{2}) is not supported"},
    {"transient x (||||||||||||||||||||||||||||||||ab)+\n", 0,
     "t.rules:1: empty alternatives (||, (|, |) are not supported"},
    {"transient x (a|)\n", 0,
     "t.rules:1: empty alternatives (||, (|, |) are not supported"},
    {"transient x |a\n", 0,
     "t.rules:1: empty alternatives (||, (|, |) are not supported"},
    {"transient x a\0b\n", 16, "t.rules:1: a NUL byte in the line"},
};

static void test_bad_rules(void **state)
{
    char err[256];
    (void)state;
    fb_rules *r = fb_rules_new();
    for (size_t i = 0; i < sizeof bad_rules / sizeof bad_rules[0]; i++) {
        const char *t = bad_rules[i].text;
        size_t len = bad_rules[i].len ? bad_rules[i].len : strlen(t);
        /* Each failed load leaves the built-ins alone. */
        assert_int_equal(
            fb_rules_load_text(r, t, len, "t.rules", err, sizeof err),
            FB_EINVAL);
        if (bad_rules[i].err == NULL)
            assert_non_null(strstr(err, "t.rules:1: bad rule name"));
        else if (strncmp(err, bad_rules[i].err, strlen(bad_rules[i].err)))
            fail_msg("rules %zu: got \"%s\", want \"%s...\"", i, err,
                     bad_rules[i].err);
    }
    expect(r, "Error: read ECONNRESET\n", T, "connection_reset");
    expect(r, "x\n", U, "unknown");
    /* errbuf may be small or absent. */
    assert_int_equal(fb_rules_load_text(r, "x", 1, "t", err, 4), FB_EINVAL);
    assert_string_equal(err, "t:1");
    assert_int_equal(fb_rules_load_text(r, "x", 1, "t", NULL, 0), FB_EINVAL);
    fb_rules_free(r);
}

static void test_pattern_limits(void **state)
{
    char err[256], line[1200];
    (void)state;
    fb_rules *r = fb__rules_new_empty();
    assert_non_null(r);
    /* Deep but cheap nesting and ordinary repeats are fine. */
    const char *ok = "transient a ((a{1,4}){1,4}){1,4}\n"
                     "transient b [[:alpha:]]{2,5}[]x]+[^]y]*\n"
                     "transient c x{,3}|y{2,}|z{3}\n";
    assert_int_equal(
        fb_rules_load_text(r, ok, strlen(ok), "t", err, sizeof err), FB_OK);
    expect(r, "--bcdbc]]--\n", T, "b");
    /* A pattern of more than 1 KiB. */
    int n = snprintf(line, sizeof line, "transient long ");
    memset(line + n, 'x', 1025);
    line[n + 1025] = '\0';
    assert_int_equal(
        fb_rules_load_text(r, line, strlen(line), "t", err, sizeof err),
        FB_EINVAL);
    assert_string_equal(err, "t:1: pattern longer than 1024 bytes");
    fb_rules_free(r);

    /* At most 1024 rules in a set. */
    size_t cap = 1100 * 24, len = 0;
    char *many = malloc(cap);
    assert_non_null(many);
    for (int i = 0; i < 1025; i++)
        len += (size_t)snprintf(many + len, cap - len, "transient r%d x%d\n", i,
                                i);
    r = fb__rules_new_empty();
    assert_int_equal(fb_rules_load_text(r, many, len, "t", err, sizeof err),
                     FB_EINVAL);
    assert_string_equal(err, "t:1025: more than 1024 rules");
    free(many);
    fb_rules_free(r);
}

/* ---- hostile tails ------------------------------------------------------ */

static void test_empty_tail(void **state)
{
    fb_verdict v;
    (void)state;
    fb_classify(builtin, 1, 0, NULL, 0, &v);
    assert_int_equal(v.cls, U);
    assert_string_equal(v.rule, "unknown");
    assert_string_equal(v.matched, "");
    fb_classify(builtin, 1, 0, "", 0, &v);
    assert_int_equal(v.cls, U);
    fb_classify(builtin, 1, 0, "\n \t\r\n\n", 6, &v);
    assert_int_equal(v.cls, U);
    assert_string_equal(fb_fail_class_name(U), "unknown");
    assert_string_equal(fb_fail_class_name(D), "deterministic");
    assert_string_equal(fb_fail_class_name(T), "transient");
    assert_string_equal(fb_fail_class_name(B), "budget");
}

static void test_dirty_bytes(void **state)
{
    fb_verdict v;
    /* NULs, broken UTF-8, colours, a CR line end, no final newline. */
    const char t[] = "\xff\xfe\x00garbage\x00\x80\n"
                     "\x1b[1m\x1b[31mTypeError\x1b[0m: x is not a function "
                     "\xc3\xa9\xe2\x82\r\n"
                     "progress 10%\rprogress 20%\r";
    (void)state;
    fb_classify(builtin, 1, 0, t, sizeof t - 1, &v);
    assert_int_equal(v.cls, D);
    assert_string_equal(v.rule, "type_error");
    assert_string_equal(v.matched, "TypeError: x is not a function \xc3\xa9??");
    assert_printable(v.matched);
    /* A NUL in the middle of the line that decides. */
    const char u[] = "Error: connect\0ECONNREFUSED 127.0.0.1:5432";
    fb_classify(builtin, 1, 0, u, sizeof u - 1, &v);
    assert_string_equal(v.rule, "connection_refused");
    assert_string_equal(v.matched,
                        "Error: connect ECONNREFUSED 127.0.0.1:5432");
}

static void test_long_lines(void **state)
{
    fb_verdict v;
    char *t = malloc(8192);
    size_t n = 0;
    (void)state;
    assert_non_null(t);
    /* 600 bytes of two-byte characters, then the error. */
    for (int i = 0; i < 300; i++) {
        t[n++] = '\xc3';
        t[n++] = '\xa9';
    }
    n += (size_t)snprintf(t + n, 8192 - n,
                          " Error: connect ECONNREFUSED "
                          "10.0.0.5:5432 ");
    for (int i = 0; i < 300; i++)
        t[n++] = 'z';
    fb_classify(builtin, 1, 0, t, n, &v);
    assert_string_equal(v.rule, "connection_refused");
    assert_true(strlen(v.matched) < sizeof v.matched);
    assert_non_null(strstr(v.matched, "ECONNREFUSED"));
    assert_printable(v.matched);
    /* A match of 200 blanks still shows something (found by fuzzing). */
    fb_rules *r = with_user_rules("transient indent ^ +\n");
    memset(t, ' ', 200);
    memcpy(t + 200, "x", 2);
    fb_classify(r, 1, 0, t, 201, &v);
    assert_string_equal(v.rule, "indent");
    assert_string_equal(v.matched, "x");
    fb_rules_free(r);
    /* Past the first 4 KiB of a line nothing is read. */
    memset(t, 'a', 5000);
    memcpy(t + 4500, "ECONNRESET", 10);
    fb_classify(builtin, 1, 0, t, 5000, &v);
    assert_int_equal(v.cls, U);
    free(t);
}

static void test_bounds(void **state)
{
    fb_verdict v;
    size_t cap = 200000, n = 0;
    char *t = malloc(cap);
    (void)state;
    assert_non_null(t);
    /* The error first, then 70 KiB without a newline: out of the window. */
    n = (size_t)snprintf(t, cap, "ModuleNotFoundError: No module named 'x'\n");
    memset(t + n, 'a', 70000);
    n += 70000;
    fb_classify(builtin, 1, 0, t, n, &v);
    assert_int_equal(v.cls, U);
    /* The error at the end of a 190 KB tail is found. */
    memset(t, 'b', cap);
    memcpy(t + cap - 41, "\nModuleNotFoundError: No module named 'x'", 41);
    fb_classify(builtin, 1, 0, t, cap, &v);
    assert_string_equal(v.rule, "import_error");
    /* 511 non-blank lines after the error are read through; 512 are not. */
    for (int after = 511; after <= 512; after++) {
        n = (size_t)snprintf(t, cap, "ModuleNotFoundError: x\n");
        for (int i = 0; i < after; i++)
            n += (size_t)snprintf(t + n, cap - n, "step %d done\n\n", i);
        fb_classify(builtin, 1, 0, t, n, &v);
        assert_int_equal(v.cls, after == 511 ? D : U);
    }
    free(t);
}

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_random_tail(void **state)
{
    static const char *const words[] = {
        "\n",          "\r",        "\x1b[", "\x1b]",    "ERROR:  ",
        "SQLSTATE ",   "timed out", "\xc3",  "\xe2\x82", "    at ",
        "TypeError: ", "(",         "\0",    "exit=",
    };
    size_t n = 1 << 20;
    char *t = malloc(n);
    fb_verdict v;
    (void)state;
    assert_non_null(t);
    for (int round = 0; round < 4; round++) {
        size_t i = 0;
        while (i < n) {
            uint64_t x = next_rand();
            if (round > 1 && x % 5 == 0) {
                const char *w =
                    words[(x >> 8) % (sizeof words / sizeof *words)];
                size_t wl = strlen(w) ? strlen(w) : 1;
                if (i + wl > n)
                    break;
                memcpy(t + i, w, wl);
                i += wl;
            } else {
                t[i++] = (char)(round == 1 ? 0x20 + x % 95 : x >> 24);
            }
        }
        fb_classify(builtin, round - 1, round, t, i, &v);
        assert_true(v.cls >= U && v.cls <= B);
        assert_true(strlen(v.rule) > 0 && strlen(v.rule) < sizeof v.rule);
        assert_printable(v.matched);
    }
    free(t);
}

static int setup(void **state)
{
    (void)state;
    builtin = fb_rules_new();
    return builtin == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    fb_rules_free(builtin);
    return 0;
}

int main(void)
{
    const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_last_error_wins),
        cmocka_unit_test(test_same_line_order),
        cmocka_unit_test(test_evidence_free_lines),
        cmocka_unit_test(test_status_before_text),
        cmocka_unit_test(test_user_rules_first),
        cmocka_unit_test(test_later_file_first),
        cmocka_unit_test(test_user_ignore),
        cmocka_unit_test(test_signals_and_lists),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_bad_rules),
        cmocka_unit_test(test_pattern_limits),
        cmocka_unit_test(test_empty_tail),
        cmocka_unit_test(test_dirty_bytes),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_random_tail),
    };
    enum { NSAMPLES = sizeof samples / sizeof samples[0] };
    enum { NFIXED = sizeof fixed / sizeof fixed[0] };
    /* One cmocka test per sample, so a failure names its family. */
    static struct CMUnitTest tests[NSAMPLES + NFIXED];
    for (size_t i = 0; i < NSAMPLES; i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate(
            test_sample, (void *)(uintptr_t)&samples[i]);
        t.name = samples[i].what;
        tests[i] = t;
    }
    memcpy(tests + NSAMPLES, fixed, sizeof fixed);
    return _cmocka_run_group_tests("classify", tests, NSAMPLES + NFIXED, setup,
                                   teardown);
}
