-- Use TimescaleDB where the server offers it.
--
-- The extension is only usable when the server preloads it (shared_preload_libraries); a server
-- that merely has the files installed would fail at CREATE EXTENSION. Where it is not there the
-- product runs on plain PostgreSQL with the same tables (the embedded default is such a server),
-- and every later migration checks pg_extension before using a TimescaleDB function.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END
$$;
