-- The products table and its change trigger (seed 002: product changes from
-- Postgres pushed to WebSocket subscribers). Every INSERT, UPDATE and DELETE
-- on products sends one notification on the channel `product_change`:
--
--   {"action":"UPDATE","product":{"productId":1,"manufacturer":"Apple",...}}
--
-- wsgate's [[sources.postgres]] (see wsgate.toml beside this file) turns it
-- into a publication on the topic products.<productId>.
--
-- Run it in the database the source connects to:
--   psql -h 127.0.0.1 -U postgres -d shop -f examples/postgres/products.sql
-- It can be run again: it replaces the function and the trigger.

-- Quoted column names keep the JSON keys in camelCase (row_to_json uses the
-- column names; unquoted ones would be folded to lower case: "productid").
CREATE TABLE IF NOT EXISTS products (
    "productId"      integer PRIMARY KEY,
    "manufacturer"   text    NOT NULL,
    "pricePerUnit"   text    NOT NULL,
    "unitsAvailable" integer NOT NULL DEFAULT 0,
    "productName"    text    NOT NULL
);

-- A NOTIFY payload is at most 8000 bytes: pg_notify fails (and with it the
-- statement that fired the trigger) for a larger row. For wide rows, send
-- only the key and the columns subscribers need.
CREATE OR REPLACE FUNCTION notify_event_on_products_update() RETURNS TRIGGER AS $$
	DECLARE
		data json;
		notif json;
	BEGIN
		IF (TG_OP = 'DELETE') THEN
			data = row_to_json(OLD);
		ELSE
			data = row_to_json(NEW);
		END IF;

		notif = json_build_object(
			'action', TG_OP,
			'product', data
		);
		PERFORM pg_notify('product_change', notif::text);

		RETURN NULL;
	END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS products_change_trigger ON products;

CREATE TRIGGER products_change_trigger AFTER INSERT OR UPDATE OR DELETE ON products
	FOR EACH ROW EXECUTE PROCEDURE notify_event_on_products_update();
