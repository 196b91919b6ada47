-- What each code's digest is bound to besides the code: 'id' (the verification id, as every
-- digest before this migration was) or 'key' (a Pinpoint verification's key, which its verify
-- knows before it finds the row). Rows from before keep 'id' and still match.
ALTER TABLE verifications ADD COLUMN code_bound_to TEXT NOT NULL DEFAULT 'id';
