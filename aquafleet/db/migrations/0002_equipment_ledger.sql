-- The equipment ledger (policy 3.4.3): production records every installed machine and its site,
-- and sends the ledger to after-sales. It is the registry every other part looks devices up in.

CREATE TABLE sites (
    site_id    text PRIMARY KEY,
    name       text NOT NULL,
    -- a campus (school, university) or a vending area (street, residential estate)
    kind       text NOT NULL CHECK (kind IN ('campus', 'vending_area')),
    zone       text NOT NULL,
    address    text NOT NULL,
    -- IANA zone of the site; the company zone applies to policy days, this one to local demand
    timezone   text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    device_id      text PRIMARY KEY,
    -- the class decides the SLA: campus machines 30 min on site, vending machines 2 h
    class          text NOT NULL CHECK (class IN ('campus', 'vending')),
    model          text NOT NULL,
    hardware_lot   text NOT NULL,
    firmware       text NOT NULL,
    install_date   date NOT NULL,
    site_id        text NOT NULL REFERENCES sites (site_id),
    -- replaceable part -> supplier, so batch problems can be traced to a supplier (policy 4.8)
    part_suppliers jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         text NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'inactive', 'retired')),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- batch analysis groups machines by model and lot; dispatch looks machines up by site
CREATE INDEX devices_model_lot_idx ON devices (model, hardware_lot);
CREATE INDEX devices_site_idx ON devices (site_id);
