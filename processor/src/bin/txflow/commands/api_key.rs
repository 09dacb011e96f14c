//! `txflow api-key new`: a key for the gateway.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Print a new random API key, and the config line that lets the gateway accept it (the
    /// key's SHA-256: the gateway never holds the key itself).
    New {
        /// The key's name, in logs and rate limits.
        name: String,
    },
}

pub fn api_key(command: ApiKeyCommand) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::New { name } => {
            let (key, hash) = txflow::stages::gateway::keys::new_key();
            println!("key:    {key}");
            println!("config: [gateway.api_keys]");
            println!("        {name:?} = \"{hash}\"");
            println!(
                "  or:   TXFLOW_GATEWAY__API_KEYS__{}={hash}",
                name.to_ascii_uppercase().replace('-', "_")
            );
            println!("  or:   a line `{name} {hash}` in gateway.api_keys_file");
            Ok(())
        }
    }
}
