-- Run by the postgres image on first start of each database container (docker-entrypoint-initdb.d).
-- Keep in step with pgfanout/sample.py (a test checks that they match).
CREATE TABLE IF NOT EXISTS public.customers (
        id bigint PRIMARY KEY,
        name text NOT NULL,
        email text,
        created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS public.products (
        sku text PRIMARY KEY,
        title text NOT NULL,
        price numeric(10,2) NOT NULL,
        tags text[]);
CREATE TABLE IF NOT EXISTS public.orders (
        id uuid PRIMARY KEY,
        customer_id bigint NOT NULL REFERENCES public.customers,
        placed_at timestamptz NOT NULL,
        status text NOT NULL,
        note jsonb);
CREATE TABLE IF NOT EXISTS public.order_lines (
        order_id uuid REFERENCES public.orders ON DELETE CASCADE,
        line_no integer,
        sku text NOT NULL REFERENCES public.products ON UPDATE CASCADE,
        qty integer NOT NULL,
        PRIMARY KEY (order_id, line_no));
CREATE TABLE IF NOT EXISTS public.accounts (
        id integer PRIMARY KEY,
        balance numeric(14,2) NOT NULL);
