-- The database alone, one order per transaction: the rows duka writes for one
-- POST /api/v1/orders (customer looked up by code, order, notification, order.created
-- event) with NO shared counter row: the event's seq comes from a sequence, so
-- concurrent transactions do not queue behind one row lock. This is PostgreSQL's own
-- speed for these rows one order at a time. bench/run runs it with `pgbench -M prepared`
-- (sqlx prepares its statements too) on a copy of duka's database that has
-- `bench_event_seq`; duka's own database never sees these rows.
\set c random(1, :customers)
\set n random(1, 999999999999999999)
BEGIN;
SELECT id AS cid, name AS cname, phone AS cphone FROM customers WHERE code = 'BENCH-' || lpad(:c::text, 6, '0') \gset
INSERT INTO orders (id, order_number, customer_id, item, quantity, amount_minor, currency, status, created_at, updated_at)
  VALUES (gen_random_uuid(), 'ORD-PG-' || :n::text, :cid::uuid, 'bench pg', 1, 120000, 'KES', 'pending',
          (extract(epoch from clock_timestamp()) * 1000)::bigint, (extract(epoch from clock_timestamp()) * 1000)::bigint)
  RETURNING id AS oid \gset
INSERT INTO notifications (id, order_id, customer_id, phone, message, status, attempts, provider, next_attempt_at, created_at, updated_at)
  VALUES (gen_random_uuid(), :oid::uuid, :cid::uuid, :cphone, 'Hi ' || :cname || ', we have your order ORD-PG-' || :n::text || ': 1 x bench pg, KES 1200.00. Thank you!',
          'queued', 0, 'log', (extract(epoch from clock_timestamp()) * 1000)::bigint,
          (extract(epoch from clock_timestamp()) * 1000)::bigint, (extract(epoch from clock_timestamp()) * 1000)::bigint);
INSERT INTO events (seq, kind, at, data)
  VALUES (nextval('bench_event_seq'), 'order.created', (extract(epoch from clock_timestamp()) * 1000)::bigint,
          '{"id":"' || :oid::text || '","order_number":"ORD-PG-' || :n::text || '","customer":{"id":"' || :cid::text || '","name":"' || :cname::text || '","code":"BENCH-000001","phone":"' || :cphone::text || '"},"item":"bench pg","quantity":1,"amount":"1200.00","currency":"KES","status":"pending","notification":{"id":"019aa9e0-0000-7000-8000-000000000002","status":"queued","updated_at":"2026-11-22T02:00:00.000Z"},"created_at":"2026-11-22T02:00:00.000Z","updated_at":"2026-11-22T02:00:00.000Z"}');
END;
