-- Version 8: each destination records whether its deliveries may reach loopback/private
-- addresses (SSRF), decided by the server that created or last changed it.
--
-- Servers sharing a database may run with different --allow-private-destinations; a decision
-- made by the delivering server would make a record's outcome depend on which server leased
-- it. NULL for destinations stored before this version, which the delivering server's own
-- flag decides (as before) until a change records a decision. Adding a nullable column
-- without a default rewrites nothing.
ALTER TABLE destinations ADD COLUMN allow_private boolean;
