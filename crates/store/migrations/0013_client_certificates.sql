-- Mutual TLS: a tablet may be bound to the client certificate the provisioning CA issued it
-- (its SHA-256). A bound tablet must present that certificate; a certificate is accepted only
-- for the tablet it is bound to.
ALTER TABLE devices ADD COLUMN client_cert_sha256 bytea
    CHECK (client_cert_sha256 IS NULL OR length(client_cert_sha256) = 32);
