"""Every type family, with edge values, from a writer with odd session settings, through the whole pipeline."""

from devstack.compare import table_digest
from tests.integration.pipeline import BOTH_TRIGGERS

TYPES_DDL = [
    "CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE TYPE public.stamp AS (at timestamp, note text)",
    "CREATE DOMAIN public.utc_time AS timestamptz",
    """CREATE TABLE public.everything (
        id int PRIMARY KEY, t text, b bytea, n numeric, n2 numeric(12,4), f8 float8, f4 float4, i8 bigint,
        d date, ts timestamp, tstz timestamptz, tm time, iv interval, ok boolean, u uuid, j jsonb, js json,
        arr int[], arr2 int[][], tarr text[], darr date[], e public.mood, c public.stamp, dom public.utc_time,
        m money, bits varbit, net inet, p point, r tstzrange, x xml)""",
]

ROWS = [
    "(1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(2, '', '', 0, 0, 0, 0, 0, '2000-01-01', '2000-01-01', '2000-01-01 00:00+00', '00:00', '0', false,"
    " '00000000-0000-0000-0000-000000000000', '{}', '[]', '{}', '{}', '{}', '{}', 'sad', ROW(NULL, ''), NULL, 0, '',"
    " '0.0.0.0', '(0,0)', 'empty', '<a/>')",
    "(3, 'ünïcödé ''quoted'' \"dq\" \\ back\\slash', '\\x00ff10', 'NaN', 'NaN', 'NaN', '-Infinity', -9223372036854775808,"
    " '-infinity', 'infinity', '-infinity', '24:00', '-1 year -2 days -03:04:05.678901', true, gen_random_uuid(),"
    " '{\"k\": [1, 2.5e300, \"ü\", null]}', '{\"raw\" : 1}', '{-1,0,1}', '{{1,2},{3,4}}', '{NULL,\"a,b\",\"\"}',"
    " '{infinity,1999-12-31}', 'happy', ROW('1999-12-31 23:59:59.999999', 'n,\"x\"'), '2026-11-23 22:55:00.123456+05:30',"
    " '-92233720368547758.08', '10101', '2001:db8::ff/64', '(1.5e-300,-2.25)', '[2020-01-01 00:00+00,infinity)', '<b>ü</b>')",
    "(4, repeat('x', 1000000), decode(repeat('ab', 1000000), 'hex'), 'Infinity', 12345678.1234, 1e-300,"
    " 3.4028235e38, 9223372036854775807, '4713-01-01 BC', '294276-12-31 23:59:59.999999', 'infinity', '23:59:59.999999',"
    " '178000000 years', true, gen_random_uuid(), '[]', 'null', NULL, NULL, NULL, NULL, 'ok', NULL, 'infinity',"
    " '92233720368547758.07', '', '10.0.0.1', '(-0,0)', '(,)', NULL)",
    "(5, 'tab\tnew\nline', '\\x', -0.000000000001, -99999999.9999, '-0', 'NaN', 1, '1999-01-08', '1999-01-08 04:05:06',"
    " '1999-01-08 04:05:06 PST', '04:05:06.789', '1 mon -1 day 00:00:00.000001', NULL, gen_random_uuid(),"
    " '{\"a\": {\"b\": \"\\\\u00e9\"}}', '  {\"spaces\": true}  ', '{}', '{{{1}}}', '{\"\\\\\\\\\"}', '{}', 'sad',"
    " ROW('infinity', NULL), NULL, '0.01', '1', '::1', '(1e300,1)', '[,)', '<c/>')",
]


@BOTH_TRIGGERS
def test_every_type_round_trips_through_the_pipeline(pipeline):
    pipeline.prepare(install=False)
    source = pipeline.config.sources[pipeline.source]
    databases = [pipeline.primary(), *(pipeline.replica(s) for s in pipeline.subscribers)]
    for conn in databases:
        with conn:
            for statement in TYPES_DDL:
                conn.execute(statement)
    from agent import capture

    with pipeline.primary() as conn:
        capture.install(conn, source.model_copy(update={"tables": [*source.tables, "public.everything"]}))
    pipeline.start()
    with pipeline.primary() as conn:
        # the writer's own settings must not leak into what is captured
        for setting in (
            "DateStyle = 'SQL, DMY'",
            "IntervalStyle = 'sql_standard'",
            "TimeZone = 'Pacific/Chatham'",
            "extra_float_digits = -15",
            "bytea_output = 'escape'",
            "lc_monetary = 'C'",
        ):
            conn.execute(f"SET {setting}")
        with conn.transaction():
            for row in ROWS:
                conn.execute(f"INSERT INTO public.everything VALUES {row}")
        conn.execute("UPDATE public.everything SET id = 6, t = t || '!' WHERE id = 3")
        conn.execute("DELETE FROM public.everything WHERE id = 2")
    pipeline.wait_caught_up(timeout=120)
    with pipeline.primary() as conn:
        expected = table_digest(conn, "public", "everything", ["id"])
        assert expected.rows == 4
        exact = conn.execute("SELECT md5(string_agg(e::text, '|' ORDER BY id)) FROM public.everything e").fetchone()
    for sub in pipeline.subscribers:
        with pipeline.replica(sub) as conn:
            assert table_digest(conn, "public", "everything", ["id"]) == expected, sub
            assert conn.execute("SELECT md5(string_agg(e::text, '|' ORDER BY id)) FROM public.everything e").fetchone() == exact
            # values compare equal as values too, not only as text
            assert conn.execute("SELECT f8::text, n::text, f4::text FROM public.everything WHERE id = 6").fetchone() == (
                "NaN",
                "NaN",
                "-Infinity",
            )
