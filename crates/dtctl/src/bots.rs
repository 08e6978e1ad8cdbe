//! `dtctl bots add NAME --roles=R1,...`: a bot (machine) user and the join token it logs in
//! with (`dtsh login --bot --token=T`). Bot certificates carry `devtrust-bot`, so a cluster
//! in `required-for-humans` mode lets them in without a trusted device.

use std::time::Duration;

use clap::Subcommand;
use dt_proto::v1 as pb;
use dt_proto::v1::node_service_client::NodeServiceClient;

use crate::{Global, connect_channel, proxy_hint};
use dt_cli::{Format, api_err, parse_duration};

#[derive(Subcommand)]
pub enum BotsCmd {
    /// Add a bot; prints its join token and the `dtsh login --bot` command that uses it.
    Add {
        name: String,
        /// Comma-separated roles, e.g. access.
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Comma-separated OS logins for {{internal.logins}}.
        #[arg(long, value_delimiter = ',')]
        logins: Vec<String>,
        /// How long the join token works (it can be used until then).
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
        /// text prints only the token.
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
}

pub async fn run(g: &Global, cmd: BotsCmd) -> anyhow::Result<()> {
    let mut c = NodeServiceClient::new(connect_channel(g).await?);
    match cmd {
        BotsCmd::Add {
            name,
            roles,
            logins,
            ttl,
            format,
        } => {
            let resp = c
                .add_bot(pb::AddBotRequest {
                    name: name.clone(),
                    roles,
                    logins,
                    token_ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(api_err)?
                .into_inner();
            match format {
                Some(Format::Text) => println!("{}", resp.token),
                Some(Format::Json) | Some(Format::Yaml) => println!(
                    "{}",
                    serde_json::json!({"bot": name, "token": resp.token, "token_name": resp.token_name, "expires_unix": resp.expires_unix})
                ),
                None => {
                    println!(
                        "Bot {name:?} has been created. Its join token {} expires in {}.",
                        resp.token,
                        dt_types::duration::format_duration(ttl)
                    );
                    println!("\nOn the bot's machine, run:\n");
                    let pin = match pb::auth_service_client::AuthServiceClient::new(
                        connect_channel(g).await?,
                    )
                    .status(pb::StatusRequest {})
                    .await
                    {
                        Ok(st) => st.into_inner().host_ca_pin,
                        Err(_) => "CA_PIN".into(),
                    };
                    println!(
                        "  dtsh login --bot --token={} --proxy={} --ca-pin={pin}\n",
                        resp.token,
                        proxy_hint(g)
                    );
                }
            }
        }
    }
    Ok(())
}
