-- Version 6: each destination records whether its deliveries may reach loopback/private
-- addresses (SSRF), decided by the server that created or last changed it.
--
-- Servers sharing a store may run with different --allow-private-destinations; a decision
-- made by the delivering server would make a record's outcome depend on which server leased
-- it. 1 allowed, 0 refused; NULL for destinations stored before this version, which the
-- delivering server's own flag decides (as before) until a change records a decision.
ALTER TABLE destinations ADD COLUMN allow_private INTEGER;
