-- Version 7: the number of request-log partitions no longer follows the input.
--
-- Until now every UTC day a record named got a partition of its own, so one org sending
-- records dated on 2,000 different days made 2,000 partitions (each with its indexes). Every
-- read of every org then locked them all and the lock table ran out
-- (max_locks_per_transaction). Now a day gets its own partition only inside the window of
-- day partitions (from `first_day`, a server setting counted back from today, to the days made
-- ahead); a record older than the window goes into a coarse partition that spans the whole gap
-- between the partitions around it (named request_logs_upto_YYYYMMDD after its upper bound),
-- so scattered old dates fill at most one partition per gap, and gaps only ever shrink.
-- Partitions that exist are kept as they are.

-- The partitions of request_logs with their bounds in Unix ms, [lo, hi).
CREATE FUNCTION apitrail_request_log_bounds(OUT name text, OUT lo bigint, OUT hi bigint)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text, m[1]::bigint, m[2]::bigint
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid,
           regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        'FROM \(''?(-?[0-9]+)''?\) TO \(''?(-?[0-9]+)''?\)') AS m
     WHERE i.inhparent = 'request_logs'::regclass
$$;

-- Makes sure a partition holds UTC day `day` (days since 1970-01-01) and returns its bounds:
-- the day's own partition when `day >= first_day`, else a coarse partition over the gap. One
-- advisory lock serializes all partition making (a coarse partition's bounds depend on its
-- neighbours; partitions are made rarely), and the coverage check runs under it, so servers
-- racing for the same day find the partition the first one made. The table is created on its
-- own and then attached: ATTACH PARTITION locks the parent in SHARE UPDATE EXCLUSIVE mode
-- (reads and inserts go on) where CREATE TABLE ... PARTITION OF would lock it exclusively.
CREATE FUNCTION apitrail_request_log_home(day bigint, first_day bigint,
                                          OUT lo bigint, OUT hi bigint)
LANGUAGE plpgsql AS $$
DECLARE
    want_lo bigint := day * 86400000;
    want_hi bigint := want_lo + 86400000;
    window_lo bigint := first_day * 86400000;
    part text;
BEGIN
    -- 0x61707473 ("apts"): the one lock of partition making (0x61707472 keyed the per-day
    -- locks of version 3).
    PERFORM pg_advisory_xact_lock(1634759795);
    SELECT b.lo, b.hi INTO lo, hi
      FROM apitrail_request_log_bounds() b
     WHERE b.lo <= want_lo AND want_lo < b.hi;
    IF FOUND THEN
        RETURN;
    END IF;
    IF day >= first_day THEN
        lo := want_lo;
        hi := want_hi;
        part := 'request_logs_' || to_char(to_timestamp(day * 86400) AT TIME ZONE 'UTC', 'YYYYMMDD');
    ELSE
        SELECT coalesce(max(b.hi), -9223372036854775808) INTO lo
          FROM apitrail_request_log_bounds() b WHERE b.hi <= want_lo;
        SELECT least(coalesce(min(b.lo), window_lo), window_lo) INTO hi
          FROM apitrail_request_log_bounds() b WHERE b.lo >= want_hi;
        part := 'request_logs_upto_'
            || to_char(to_timestamp(hi / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I (LIKE request_logs INCLUDING DEFAULTS)', part);
    EXECUTE format('ALTER TABLE request_logs ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                   part, lo, hi);
END
$$;

-- Servers of version 6 still running during a rolling upgrade make day partitions through
-- this function: it now goes through the same lock and coverage check, so it never makes a
-- day that a coarse partition already holds.
CREATE OR REPLACE FUNCTION apitrail_request_log_partition(day bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT FROM apitrail_request_log_home(day, day)
$$;
