//! `txflow accounts get|export`: balances from the store, or from a running `txflow dev`.

use anyhow::bail;
use clap::Subcommand;
use futures::TryStreamExt;

use txflow::adapters::embedded::remote::DevClient;
use txflow::app::{Backend, Services};
use txflow::config::Config;
use txflow::ports::LedgerStore;
use txflow::stages::gateway::account_json;

use super::print_line;

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// One account's balance, currency and version, as JSON.
    Get {
        /// The account id.
        account_id: String,
    },
    /// Every account, one JSON object a line.
    Export,
}

pub async fn accounts(config: &Config, command: AccountsCommand) -> anyhow::Result<()> {
    let store = Services.store(config).await?;
    match command {
        AccountsCommand::Get { account_id } => match store.account(&account_id).await? {
            Some(account) => print_line(&account_json(&account_id, &account)),
            None => bail!("account {account_id:?} has no recorded event"),
        },
        AccountsCommand::Export => {
            let mut accounts = store.accounts();
            while let Some((id, account)) = accounts.try_next().await? {
                print_line(&account_json(&id, &account))?;
            }
            Ok(())
        }
    }
}

pub async fn dev_accounts(dev: &DevClient, command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::Get { account_id } => match dev.account(&account_id).await? {
            Some(account) => print_line(&account),
            None => bail!("account {account_id:?} has no recorded event"),
        },
        AccountsCommand::Export => {
            for line in dev.accounts().await?.lines() {
                print_line(&line)?;
            }
            Ok(())
        }
    }
}
