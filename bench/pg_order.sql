-- "duka's own design (counter row lock)": the transaction duka's write path ran for one
-- POST /api/v1/orders on PostgreSQL before issue 11 (src/store/writes.rs), one order per
-- transaction: lock the event counter row, look the customer up by code, check the order
-- number, insert order + notification + event, update the counter. Every transaction
-- queues behind the one counter row, so this measures that serialisation, not PostgreSQL:
-- the limit rows are pg_limit_1.sql and pg_limit_64.sql. bench/run runs it with
-- `pgbench -M prepared` on a copy of duka's database.
\set c random(1, :customers)
\set n random(1, 999999999999)
BEGIN;
SELECT last_seq FROM event_counter WHERE id = 1 FOR UPDATE \gset
SELECT id AS cid, name AS cname, phone AS cphone FROM customers WHERE code = 'BENCH-' || lpad(:c::text, 6, '0') \gset
SELECT COUNT(*) FROM orders WHERE order_number = 'ORD-PG-' || :n::text;
INSERT INTO orders (id, order_number, customer_id, item, quantity, amount_minor, currency, status, created_at, updated_at)
  VALUES (gen_random_uuid(), 'ORD-PG-' || :n::text, :cid::uuid, 'bench pg', 1, 120000, 'KES', 'pending',
          (extract(epoch from clock_timestamp()) * 1000)::bigint, (extract(epoch from clock_timestamp()) * 1000)::bigint)
  RETURNING id AS oid \gset
INSERT INTO notifications (id, order_id, customer_id, phone, message, status, attempts, provider, next_attempt_at, created_at, updated_at)
  VALUES (gen_random_uuid(), :oid::uuid, :cid::uuid, :cphone, 'Hi ' || :cname || ', we have your order ORD-PG-' || :n::text || ': 1 x bench pg, KES 1200.00. Thank you!',
          'queued', 0, 'log', (extract(epoch from clock_timestamp()) * 1000)::bigint,
          (extract(epoch from clock_timestamp()) * 1000)::bigint, (extract(epoch from clock_timestamp()) * 1000)::bigint);
INSERT INTO events (seq, kind, at, data)
  VALUES (:last_seq + 1, 'order.created', (extract(epoch from clock_timestamp()) * 1000)::bigint,
          '{"id":"019aa9e0-0000-7000-8000-000000000000","order_number":"ORD-PG-' || :n::text || '","customer":{"id":"019aa9e0-0000-7000-8000-000000000001","name":"Bench Customer","code":"BENCH-000001","phone":"+254710000001"},"item":"bench pg","quantity":1,"amount":"1200.00","currency":"KES","status":"pending","notification":{"id":"019aa9e0-0000-7000-8000-000000000002","status":"queued","updated_at":"2026-11-22T02:00:00.000Z"},"created_at":"2026-11-22T02:00:00.000Z","updated_at":"2026-11-22T02:00:00.000Z"}');
UPDATE event_counter SET last_seq = :last_seq + 1 WHERE id = 1;
END;
