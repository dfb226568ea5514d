//! Fault injection beneath our committers: a schedule of faults ([`Faults`], scripted or seeded at random) and two
//! wrappers that act on it: around Iceberg's SQL catalog ([`FaultyCatalog`]) and around Paimon's filesystem catalog
//! and its snapshot publication ([`FaultyPaimon`]). On command or at random they lose the reply of a commit that
//! landed, fail a reload, let a competing writer in just before a commit (or right after, on top), or slow a commit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent};

/// What can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The commit lands, but the caller gets an error.
    LostReply,
    /// The commit lands, the competitor set with [`FaultyCatalog::compete_after`] commits on top, and the caller gets
    /// an error.
    LostReplyThenCompetitor,
    /// The next table load fails.
    ReloadFails,
    /// Another writer changes the table (metadata only) right before the commit.
    CompetingMetadataChange,
    /// The commit takes a while.
    Slow,
}

/// A competing commit run right before the next commit.
pub type Competitor = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Default)]
struct State {
    /// Faults to inject, in order, at the next commit (or load, for `ReloadFails`).
    scripted: VecDeque<Fault>,
    /// Seeded random faults: `(rng state, probability per load, probability per commit)`, in 1/1000.
    random: Option<(u64, u64, u64)>,
    competitor: Option<Competitor>,
    after: Option<Competitor>,
    injected: BTreeMap<Fault, u64>,
}

/// The faults to inject, shared by the wrappers.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
}

pub struct FaultyCatalog {
    pub inner: Arc<dyn Catalog>,
    faults: Arc<Faults>,
}

impl std::ops::Deref for FaultyCatalog {
    type Target = Faults;
    fn deref(&self) -> &Faults {
        &self.faults
    }
}

impl std::fmt::Debug for FaultyCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyCatalog")
    }
}

fn injected(message: &str) -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::Unexpected, format!("injected fault: {message}"))
}

impl FaultyCatalog {
    pub fn new(inner: Arc<dyn Catalog>) -> Arc<Self> {
        Arc::new(FaultyCatalog { inner, faults: Arc::default() })
    }

    /// The schedule, to steer while the catalog is in use.
    pub fn faults(&self) -> Arc<Faults> {
        Arc::clone(&self.faults)
    }
}

impl Faults {
    pub fn script(&self, fault: Fault) {
        self.state.lock().expect("lock").scripted.push_back(fault);
    }

    /// Runs `competitor` right before the next commit reaches the catalog.
    pub fn compete(&self, competitor: Competitor) {
        self.state.lock().expect("lock").competitor = Some(competitor);
    }

    /// Injects random faults from `seed`: at each load with `load_per_mille` / 1000 probability, at each commit
    /// with `commit_per_mille` / 1000.
    pub fn randomize(&self, seed: u64, load_per_mille: u64, commit_per_mille: u64) {
        self.state.lock().expect("lock").random = Some((seed | 1, load_per_mille, commit_per_mille));
    }

    /// Runs `competitor` right after the next commit lands (with [`Fault::LostReplyThenCompetitor`]).
    pub fn compete_after(&self, competitor: Competitor) {
        self.state.lock().expect("lock").after = Some(competitor);
    }

    pub fn calm(&self) {
        let mut s = self.state.lock().expect("lock");
        s.random = None;
        s.scripted.clear();
    }

    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.state.lock().expect("lock").injected.clone()
    }

    /// Runs the competitor set for before the next commit, if any.
    async fn run_competitor(&self) {
        let competitor = self.state.lock().expect("lock").competitor.take();
        if let Some(compete) = competitor {
            compete().await;
        }
    }

    /// Runs the competitor set for after the next commit, if any.
    async fn run_after(&self) {
        let after = self.state.lock().expect("lock").after.take();
        if let Some(compete) = after {
            compete().await;
        }
    }

    /// The next fault for an operation that can suffer `allowed`.
    fn next(&self, allowed: &[Fault]) -> Option<Fault> {
        let mut s = self.state.lock().expect("lock");
        let fault = if s.scripted.front().is_some_and(|f| allowed.contains(f)) {
            s.scripted.pop_front()
        } else if let Some((rng, load, commit)) = &mut s.random {
            let per_mille = if allowed.contains(&Fault::ReloadFails) { *load } else { *commit };
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let roll = *rng % 1000;
            // A competitor after the commit is set up by a test: never drawn at random.
            let drawable: Vec<Fault> =
                allowed.iter().copied().filter(|f| *f != Fault::LostReplyThenCompetitor).collect();
            let pick = (*rng >> 20) as usize % drawable.len();
            (roll < per_mille).then(|| drawable[pick])
        } else {
            None
        };
        if let Some(f) = fault {
            *s.injected.entry(f).or_default() += 1;
        }
        fault
    }
}

#[async_trait]
impl Catalog for FaultyCatalog {
    async fn list_namespaces(&self, parent: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(&self, n: &NamespaceIdent, p: HashMap<String, String>) -> Result<Namespace> {
        self.inner.create_namespace(n, p).await
    }
    async fn get_namespace(&self, n: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(n).await
    }
    async fn namespace_exists(&self, n: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(n).await
    }
    async fn update_namespace(&self, n: &NamespaceIdent, p: HashMap<String, String>) -> Result<()> {
        self.inner.update_namespace(n, p).await
    }
    async fn drop_namespace(&self, n: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(n).await
    }
    async fn list_tables(&self, n: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(n).await
    }
    async fn create_table(&self, n: &NamespaceIdent, c: TableCreation) -> Result<Table> {
        self.inner.create_table(n, c).await
    }
    async fn load_table(&self, t: &TableIdent) -> Result<Table> {
        if self.next(&[Fault::ReloadFails]).is_some() {
            return Err(injected("reload fails"));
        }
        self.inner.load_table(t).await
    }
    async fn drop_table(&self, t: &TableIdent) -> Result<()> {
        self.inner.drop_table(t).await
    }
    async fn purge_table(&self, t: &TableIdent) -> Result<()> {
        self.inner.purge_table(t).await
    }
    async fn table_exists(&self, t: &TableIdent) -> Result<bool> {
        self.inner.table_exists(t).await
    }
    async fn rename_table(&self, s: &TableIdent, d: &TableIdent) -> Result<()> {
        self.inner.rename_table(s, d).await
    }
    async fn register_table(&self, t: &TableIdent, l: String) -> Result<Table> {
        self.inner.register_table(t, l).await
    }
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.run_competitor().await;
        match self.next(&[
            Fault::LostReply,
            Fault::LostReplyThenCompetitor,
            Fault::CompetingMetadataChange,
            Fault::Slow,
        ]) {
            Some(Fault::LostReply) => {
                self.inner.update_table(commit).await?;
                Err(injected("the commit landed but its reply was lost"))
            }
            Some(Fault::LostReplyThenCompetitor) => {
                self.inner.update_table(commit).await?;
                self.run_after().await;
                Err(injected("the commit landed, another landed on top, and the reply was lost"))
            }
            Some(Fault::CompetingMetadataChange) => {
                let table = self.inner.load_table(commit.identifier()).await?;
                let tx = Transaction::new(&table);
                let tx = tx
                    .update_table_properties()
                    .set("competitor".into(), uuid::Uuid::new_v4().to_string())
                    .apply(tx)?;
                tx.commit(self.inner.as_ref()).await?;
                self.inner.update_table(commit).await
            }
            Some(Fault::Slow) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.inner.update_table(commit).await
            }
            _ => self.inner.update_table(commit).await,
        }
    }
}

/// Paimon's filesystem catalog (loads can fail) and its snapshot publication (replies can be lost, competitors can
/// commit first or on top, commits can be slow), on one schedule.
pub struct FaultyPaimon {
    pub catalog: Arc<dyn paimon::Catalog>,
    faults: Arc<Faults>,
}

impl std::ops::Deref for FaultyPaimon {
    type Target = Faults;
    fn deref(&self) -> &Faults {
        &self.faults
    }
}

impl FaultyPaimon {
    pub fn new(catalog: Arc<dyn paimon::Catalog>) -> Arc<Self> {
        Arc::new(FaultyPaimon { catalog, faults: Arc::default() })
    }

    /// The schedule, to steer while the lake is in use.
    pub fn faults(&self) -> Arc<Faults> {
        Arc::clone(&self.faults)
    }
}

fn paimon_injected(message: &str) -> paimon::Error {
    paimon::Error::DataInvalid { message: format!("injected fault: {message}"), source: None }
}

#[async_trait]
impl paimon::Catalog for FaultyPaimon {
    async fn list_databases(&self) -> paimon::Result<Vec<String>> {
        self.catalog.list_databases().await
    }
    async fn create_database(
        &self,
        name: &str,
        ignore_if_exists: bool,
        properties: HashMap<String, String>,
    ) -> paimon::Result<()> {
        self.catalog.create_database(name, ignore_if_exists, properties).await
    }
    async fn get_database(&self, name: &str) -> paimon::Result<paimon::catalog::Database> {
        self.catalog.get_database(name).await
    }
    async fn drop_database(&self, name: &str, ignore_if_not_exists: bool, cascade: bool) -> paimon::Result<()> {
        self.catalog.drop_database(name, ignore_if_not_exists, cascade).await
    }
    async fn get_table(&self, identifier: &paimon::catalog::Identifier) -> paimon::Result<paimon::table::Table> {
        if self.next(&[Fault::ReloadFails]).is_some() {
            return Err(paimon_injected("reload fails"));
        }
        self.catalog.get_table(identifier).await
    }
    async fn list_tables(&self, database_name: &str) -> paimon::Result<Vec<String>> {
        self.catalog.list_tables(database_name).await
    }
    async fn create_table(
        &self,
        identifier: &paimon::catalog::Identifier,
        creation: paimon::spec::Schema,
        ignore_if_exists: bool,
    ) -> paimon::Result<()> {
        self.catalog.create_table(identifier, creation, ignore_if_exists).await
    }
    async fn drop_table(
        &self,
        identifier: &paimon::catalog::Identifier,
        ignore_if_not_exists: bool,
    ) -> paimon::Result<()> {
        self.catalog.drop_table(identifier, ignore_if_not_exists).await
    }
    async fn rename_table(
        &self,
        from: &paimon::catalog::Identifier,
        to: &paimon::catalog::Identifier,
        ignore_if_not_exists: bool,
    ) -> paimon::Result<()> {
        self.catalog.rename_table(from, to, ignore_if_not_exists).await
    }
    async fn alter_table(
        &self,
        identifier: &paimon::catalog::Identifier,
        changes: Vec<paimon::spec::SchemaChange>,
        ignore_if_not_exists: bool,
    ) -> paimon::Result<()> {
        self.catalog.alter_table(identifier, changes, ignore_if_not_exists).await
    }
}

#[async_trait]
impl fluss_tiering::lake::paimon::Publish for FaultyPaimon {
    async fn publish(
        &self,
        table: &paimon::table::Table,
        messages: Vec<paimon::table::CommitMessage>,
        identifier: i64,
    ) -> fluss_tiering::Result<()> {
        use fluss_tiering::lake::paimon::PaimonPublish;
        let lost = |what: &str| fluss_tiering::Error::new(fluss_tiering::ErrorKind::Lake, format!("injected: {what}"));
        self.run_competitor().await;
        match self.next(&[Fault::LostReply, Fault::LostReplyThenCompetitor, Fault::Slow]) {
            Some(Fault::LostReply) => {
                PaimonPublish.publish(table, messages, identifier).await?;
                Err(lost("the commit landed but its reply was lost"))
            }
            Some(Fault::LostReplyThenCompetitor) => {
                PaimonPublish.publish(table, messages, identifier).await?;
                self.run_after().await;
                Err(lost("the commit landed, another landed on top, and the reply was lost"))
            }
            Some(Fault::Slow) => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                PaimonPublish.publish(table, messages, identifier).await
            }
            _ => PaimonPublish.publish(table, messages, identifier).await,
        }
    }
}
