//! Compiles `sql/NNNN_<name>.up.sql` (and the optional `.down.sql`) into the crate, in order,
//! with the schema each revision produces: the migrations applied one by one to an in-memory
//! database and read by the crate's own schema reader (`src/schema`, compiled into this script
//! too), so that the engine never pays for it at run time.

use std::{env, fs, path::Path};

#[allow(dead_code, unused_imports)]
#[path = "src/schema/mod.rs"]
mod schema;

fn main() {
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join("sql");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for entry in fs::read_dir(&dir).expect("migrations/sql must exist") {
        let path = entry.unwrap().path();
        println!("cargo:rerun-if-changed={}", path.display());
        let file = path
            .file_name()
            .unwrap()
            .to_str()
            .expect("UTF-8 file name")
            .to_owned();
        // The checksums of the released files, read by `cargo xtask check-migrations`.
        if file == "released.sha256" {
            continue;
        }
        let (stem, is_up) = if let Some(stem) = file.strip_suffix(".up.sql") {
            (stem, true)
        } else if let Some(stem) = file.strip_suffix(".down.sql") {
            (stem, false)
        } else {
            panic!("migrations/sql/{file}: expected NNNN_<name>.up.sql or NNNN_<name>.down.sql");
        };
        let (number, name) = stem
            .split_once('_')
            .unwrap_or_else(|| panic!("migrations/sql/{file}: expected NNNN_<name>"));
        let version: u32 = number
            .parse()
            .unwrap_or_else(|_| panic!("migrations/sql/{file}: {number} is not a revision number"));
        let entry = (
            version,
            name.to_owned(),
            file.clone(),
            path.display().to_string(),
        );
        if is_up {
            ups.push(entry)
        } else {
            downs.push(entry)
        }
    }
    ups.sort();
    // An older release, for tests and benchmarks: the history up to TGBOT_SCHEMA_HEAD only.
    println!("cargo:rerun-if-env-changed=TGBOT_SCHEMA_HEAD");
    if let Some(limit) = env::var("TGBOT_SCHEMA_HEAD").ok().filter(|v| !v.is_empty()) {
        let limit: u32 = limit
            .parse()
            .expect("TGBOT_SCHEMA_HEAD is a revision number");
        ups.retain(|(version, ..)| *version <= limit);
        downs.retain(|(version, ..)| *version <= limit);
    }
    for (index, (version, _, file, _)) in ups.iter().enumerate() {
        assert_eq!(
            *version as usize,
            index + 1,
            "migrations/sql/{file}: revisions must be numbered 1, 2, 3, ... without gaps or repeats"
        );
    }
    for (version, name, file, _) in &downs {
        assert!(
            ups.iter().any(|(v, n, _, _)| v == version && n == name),
            "migrations/sql/{file}: a down file needs its up file"
        );
    }
    let mut out = String::from(
        "/// Every migration of the schema history, in order.\npub static MIGRATIONS: &[Migration] = &[\n",
    );
    for (version, name, file, path) in &ups {
        let (down_file, down) = downs
            .iter()
            .find(|(v, _, _, _)| v == version)
            .map(|(_, _, file, path)| {
                (
                    format!("Some({file:?})"),
                    format!("Some(include_str!({path:?}))"),
                )
            })
            .unwrap_or_else(|| ("None".into(), "None".into()));
        out.push_str(&format!(
            "    Migration {{ version: {version}, name: {name:?}, file: {file:?}, up: include_str!({path:?}), down_file: {down_file}, down: {down} }},\n"
        ));
    }
    out.push_str("];\n");
    let out_dir = env::var("OUT_DIR").unwrap();
    fs::write(Path::new(&out_dir).join("migrations.rs"), out).unwrap();
    fs::write(Path::new(&out_dir).join("schemas.json"), schemas(&ups)).unwrap();
}

/// The schema of every revision from 0 (empty) to the last, as JSON: the migrations applied
/// in order to one in-memory database, read after each.
fn schemas(ups: &[(u32, String, String, String)]) -> String {
    let conn = rusqlite::Connection::open_in_memory().expect("an in-memory SQLite database opens");
    let mut schemas = vec![schema::Schema::default()];
    for (version, _, file, path) in ups {
        let sql = fs::read_to_string(path).unwrap_or_else(|e| panic!("migrations/sql/{file}: {e}"));
        if let Err(e) = conn.execute_batch(&sql) {
            panic!(
                "migrations/sql/{file} does not apply on revision {}: {e}",
                version - 1
            );
        }
        schemas.push(schema::read(&conn, &[]).expect("the schema of an in-memory database reads"));
    }
    serde_json::to_string(&schemas).expect("a schema serializes")
}
