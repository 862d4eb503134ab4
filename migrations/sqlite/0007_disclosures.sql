-- The accounting of disclosures per patient (issue 36, docs/audit.md
-- "Disclosures"): the report scans the audit entries of a time window, so
-- it finds the window's seqs by timestamp.

CREATE INDEX audit_logs_timestamp_idx ON audit_logs (timestamp, seq);

-- ---- permissions -------------------------------------------------------------

INSERT INTO permissions (name, description) VALUES
    ('patients.disclosures', 'Read the accounting of disclosures of a patient (GET /api/patients/{ref}/disclosures)');
INSERT INTO role_permissions (role, permission) VALUES
    ('super_admin', 'patients.disclosures'),
    ('admin', 'patients.disclosures');
