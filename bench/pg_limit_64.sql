-- The database alone, 64 orders per transaction, set-based: the same rows as
-- pg_limit_1.sql (64 customers looked up by code, 64 orders, 64 notifications, 64
-- order.created events, seq from a sequence, no shared counter row) written by ONE
-- multi-row statement: the customer lookup and the three multi-row INSERTs chained in
-- one CTE, so a transaction costs one round trip. This is what a set-based group commit
-- of 64 orders can reach at best. `pgbench -M prepared`; it counts transactions, so
-- bench/report.py multiplies by 64 for orders/s.
\set c random(0, :customers - 1)
\set n random(1, 9999999999999999)
BEGIN;
WITH t AS (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS ms),
want AS (
  SELECT g, 'BENCH-' || lpad((1 + (:c + g) % :customers)::text, 6, '0') AS code,
         'ORD-PG-' || :n::text || '-' || g AS number
  FROM generate_series(1, 64) AS g),
cust AS (SELECT w.number, c.id, c.name, c.phone FROM want w JOIN customers c ON c.code = w.code),
o AS (
  INSERT INTO orders (id, order_number, customer_id, item, quantity, amount_minor, currency, status, created_at, updated_at)
  SELECT gen_random_uuid(), cust.number, cust.id, 'bench pg', 1, 120000, 'KES', 'pending', t.ms, t.ms FROM cust, t
  RETURNING id, order_number, customer_id),
n AS (
  INSERT INTO notifications (id, order_id, customer_id, phone, message, status, attempts, provider, next_attempt_at, created_at, updated_at)
  SELECT gen_random_uuid(), o.id, o.customer_id, cust.phone,
         'Hi ' || cust.name || ', we have your order ' || o.order_number || ': 1 x bench pg, KES 1200.00. Thank you!',
         'queued', 0, 'log', t.ms, t.ms, t.ms
  FROM o JOIN cust ON cust.number = o.order_number, t
  RETURNING id)
INSERT INTO events (seq, kind, at, data)
SELECT nextval('bench_event_seq'), 'order.created', t.ms,
       '{"id":"' || o.id || '","order_number":"' || o.order_number || '","customer":{"id":"' || o.customer_id || '","name":"' || cust.name || '","code":"BENCH-000001","phone":"' || cust.phone || '"},"item":"bench pg","quantity":1,"amount":"1200.00","currency":"KES","status":"pending","notification":{"id":"019aa9e0-0000-7000-8000-000000000002","status":"queued","updated_at":"2026-11-22T02:00:00.000Z"},"created_at":"2026-11-22T02:00:00.000Z","updated_at":"2026-11-22T02:00:00.000Z"}'
FROM o JOIN cust ON cust.number = o.order_number, t;
END;
