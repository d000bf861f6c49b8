//! The configuration database (redb) in the state directory: accounts,
//! partners, rules and settings. Secrets never go here; they live in the
//! keystore. Each change is one redb transaction (atomic and durable).

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A table of JSON records keyed by name.
#[derive(Debug, Clone, Copy)]
pub struct Table(&'static str);

pub const ACCOUNTS: Table = Table("accounts");
pub const PARTNERS: Table = Table("partners");
pub const RULES: Table = Table("rules");
pub const SETTINGS: Table = Table("settings");

const ALL_TABLES: [Table; 4] = [ACCOUNTS, PARTNERS, RULES, SETTINGS];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("configuration database error: {0}; check the state directory's disk and permissions")]
    Database(Box<redb::Error>),
    #[error("configuration record {table}/{key} is damaged: {source}")]
    Record {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Database(Box::new(e.into()))
}

pub struct ConfigStore {
    db: Database,
}

impl std::fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore").finish_non_exhaustive()
    }
}

impl ConfigStore {
    /// Opens (or creates) the database file and every table.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = Database::create(path).map_err(db)?;
        let txn = database.begin_write().map_err(db)?;
        for table in ALL_TABLES {
            txn.open_table(definition(table)).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(Self { db: database })
    }

    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).expect("configuration records serialize");
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut t = txn.open_table(definition(table)).map_err(db)?;
            t.insert(key, bytes.as_slice()).map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    /// Inserts only when `key` is absent; returns false when it exists.
    pub fn insert_new<T: Serialize>(
        &self,
        table: Table,
        key: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(value).expect("configuration records serialize");
        let txn = self.db.begin_write().map_err(db)?;
        {
            let mut t = txn.open_table(definition(table)).map_err(db)?;
            if t.get(key).map_err(db)?.is_some() {
                return Ok(false);
            }
            t.insert(key, bytes.as_slice()).map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(true)
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(definition(table)).map_err(db)?;
        let Some(guard) = t.get(key).map_err(db)? else {
            return Ok(None);
        };
        decode(table, key, guard.value()).map(Some)
    }

    /// Every record of `table`, ordered by key.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(definition(table)).map_err(db)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db)? {
            let (k, v) = entry.map_err(db)?;
            let key = k.value().to_owned();
            let value = decode(table, &key, v.value())?;
            out.push((key, value));
        }
        Ok(out)
    }

    pub fn len(&self, table: Table) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db)?;
        let t = txn.open_table(definition(table)).map_err(db)?;
        t.len().map_err(db)
    }

    pub fn is_empty(&self, table: Table) -> Result<bool, StoreError> {
        Ok(self.len(table)? == 0)
    }

    /// Removes `key`; returns whether it existed.
    pub fn remove(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db)?;
        let existed = {
            let mut t = txn.open_table(definition(table)).map_err(db)?;
            t.remove(key).map_err(db)?.is_some()
        };
        txn.commit().map_err(db)?;
        Ok(existed)
    }

    /// A setting (a record of the settings table) or its default.
    pub fn setting<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, StoreError> {
        Ok(self.get(SETTINGS, key)?.unwrap_or_default())
    }
}

fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.0)
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Record {
        table: table.0,
        key: key.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.redb");
        {
            let store = ConfigStore::open(&path).unwrap();
            store
                .put(PARTNERS, "b", &vec!["10.2.0.0/16".to_owned()])
                .unwrap();
            store
                .put(PARTNERS, "a", &vec!["10.1.0.0/16".to_owned()])
                .unwrap();
            assert!(
                !store
                    .insert_new(PARTNERS, "a", &Vec::<String>::new())
                    .unwrap()
            );
            assert!(store.remove(PARTNERS, "b").unwrap());
            assert!(!store.remove(PARTNERS, "b").unwrap());
        }
        let store = ConfigStore::open(&path).unwrap();
        let all: Vec<(String, Vec<String>)> = store.list(PARTNERS).unwrap();
        assert_eq!(all, [("a".to_owned(), vec!["10.1.0.0/16".to_owned()])]);
        assert!(store.is_empty(RULES).unwrap());
    }
}
