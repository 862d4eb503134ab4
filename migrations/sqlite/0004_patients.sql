-- The patient link (issue 36, docs/protocol.md "Patient link"). A channel
-- and a message may carry a patient reference (an EMR / FHIR reference
-- such as Patient/123). It is never stored in clear:
--   patient_ref  the reference sealed with AES-256-GCM under a key derived
--                from the master key (version || nonce || ciphertext; the
--                owner's id is bound in), NULL when there is none;
--   patient_tag  a keyed HMAC of the reference (32 hex chars) under the
--                version the row was written with: what lookups match
--                (a lookup computes the tag under every keyring version).
-- A message concerns patient P when its own tag is one of P's tags, or its
-- own tag is NULL and its channel's tag is one of P's tags.

ALTER TABLE messages ADD COLUMN patient_ref BLOB;
ALTER TABLE messages ADD COLUMN patient_tag TEXT;
ALTER TABLE channels ADD COLUMN patient_ref BLOB;
ALTER TABLE channels ADD COLUMN patient_tag TEXT;

CREATE INDEX messages_patient_tag_idx ON messages (patient_tag, channel_id, seq)
    WHERE patient_tag IS NOT NULL;
CREATE INDEX channels_patient_tag_idx ON channels (patient_tag)
    WHERE patient_tag IS NOT NULL;

-- ---- permissions -------------------------------------------------------------

INSERT INTO permissions (name, description) VALUES
    ('patients.read', 'List a patient''s channels and messages (GET /api/patients/{ref}/...)');
INSERT INTO role_permissions (role, permission) VALUES
    ('super_admin', 'patients.read'),
    ('admin', 'patients.read');
