//! `wincc-gateway service install|uninstall|run`: the Windows service.
//!
//! On Windows the gateway registers as the service `wincc-gateway`, started
//! automatically, running `wincc-gateway.exe service run -c <config>`.
//! Configuration lives in `%ProgramData%\wincc-gateway\gateway.toml` unless
//! `-c` says otherwise; logs go to `%ProgramData%\wincc-gateway\gateway.log`.
//! On other systems these commands say so and exit 2 (use systemd there:
//! `deploy/systemd/wincc-gateway.service`).
//!
//! Recovery: `install` sets the service's recovery actions (restart after
//! 5 s, 10 s, then 30 s; failure count reset after a day) and has them
//! apply to non-crash failures too; when a task of the gateway ends
//! unexpectedly the service stops with a service-specific exit code 1, so
//! the service manager restarts it.

use std::path::PathBuf;
use std::process::ExitCode;

/// Name of the service in the Windows service manager.
pub const SERVICE_NAME: &str = "wincc-gateway";

#[cfg(not(windows))]
pub fn main(action: &str, _config: Option<PathBuf>) -> ExitCode {
    eprintln!(
        "service {action}: Windows service management is only available in Windows builds; \
         on Linux install deploy/systemd/wincc-gateway.service"
    );
    ExitCode::from(crate::cli::EXIT_CONFIG)
}

#[cfg(windows)]
pub fn main(action: &str, config: Option<PathBuf>) -> ExitCode {
    let config = config.unwrap_or_else(windows::default_config);
    let result = match action {
        "install" => windows::install(&config),
        "uninstall" => windows::uninstall(),
        "run" => windows::run(config),
        other => Err(anyhow::anyhow!("unknown service action {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service {action}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(windows)]
mod windows {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;
    use std::time::Duration;

    use anyhow::Context;
    use windows_service::service::{
        ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
        ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
        ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
    };
    use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
    use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
    use windows_service::{define_windows_service, service_dispatcher};

    use super::SERVICE_NAME;

    static CONFIG: OnceLock<PathBuf> = OnceLock::new();

    pub fn default_config() -> PathBuf {
        let base =
            std::env::var_os("ProgramData").unwrap_or_else(|| OsString::from(r"C:\ProgramData"));
        PathBuf::from(base)
            .join("wincc-gateway")
            .join("gateway.toml")
    }

    pub fn install(config: &Path) -> anyhow::Result<()> {
        let manager = ServiceManager::local_computer(
            None::<&str>,
            ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        )
        .context("cannot open the service manager (run as Administrator)")?;
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let info = ServiceInfo {
            name: OsString::from(SERVICE_NAME),
            display_name: OsString::from("WinCC Gateway (MQTT / OPC UA)"),
            service_type: ServiceType::OWN_PROCESS,
            start_type: ServiceStartType::AutoStart,
            error_control: ServiceErrorControl::Normal,
            executable_path: exe,
            launch_arguments: vec![
                OsString::from("service"),
                OsString::from("run"),
                OsString::from("-c"),
                config.as_os_str().to_owned(),
            ],
            dependencies: vec![],
            account_name: None,
            account_password: None,
        };
        let service = manager
            .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
            .context("cannot create the service")?;
        service
            .set_description("Polls a Siemens WinCC station and publishes to MQTT and OPC UA")
            .ok();
        // Restart after a failure: a crash, or a stop with a non-zero exit
        // code (a task of the gateway ended unexpectedly).
        let restart = |secs| ServiceAction {
            action_type: ServiceActionType::Restart,
            delay: Duration::from_secs(secs),
        };
        service
            .update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
                reboot_msg: None,
                command: None,
                actions: Some(vec![restart(5), restart(10), restart(30)]),
            })
            .context("cannot set the service's recovery actions")?;
        service
            .set_failure_actions_on_non_crash_failures(true)
            .context("cannot set the service's recovery actions")?;
        println!(
            "installed service {SERVICE_NAME} (config {})",
            config.display()
        );
        Ok(())
    }

    pub fn uninstall() -> anyhow::Result<()> {
        let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .context("cannot open the service manager (run as Administrator)")?;
        let service = manager
            .open_service(
                SERVICE_NAME,
                ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
            )
            .context("cannot open the service")?;
        if let Ok(status) = service.query_status() {
            if status.current_state != ServiceState::Stopped {
                let _ = service.stop();
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        service.delete().context("cannot delete the service")?;
        println!("uninstalled service {SERVICE_NAME}");
        Ok(())
    }

    define_windows_service!(ffi_service_main, service_main);

    pub fn run(config: PathBuf) -> anyhow::Result<()> {
        let _ = CONFIG.set(config);
        service_dispatcher::start(SERVICE_NAME, ffi_service_main).context(
            "not started by the service manager (use `wincc-gateway run -c FILE` in a console)",
        )
    }

    fn service_main(_args: Vec<OsString>) {
        if let Err(e) = run_service() {
            tracing::error!(error = %format!("{e:#}"), "service failed");
        }
    }

    fn run_service() -> anyhow::Result<()> {
        let config = CONFIG.get().cloned().unwrap_or_else(default_config);
        let settings =
            crate::config::Settings::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(dir) = config.parent() {
            let log = dir.join("gateway.log");
            if let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
            {
                let _ = tracing_subscriber::fmt()
                    .with_writer(std::sync::Mutex::new(file))
                    .with_ansi(false)
                    .with_env_filter(tracing_subscriber::EnvFilter::new(&settings.log.level))
                    .try_init();
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_tx = std::sync::Mutex::new(Some(stop_tx));
        let handler = move |event| match event {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                if let Some(tx) = stop_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let status = service_control_handler::register(SERVICE_NAME, handler)?;
        let report = |state, accept, exit_code| {
            status.set_service_status(ServiceStatus {
                service_type: ServiceType::OWN_PROCESS,
                current_state: state,
                controls_accepted: accept,
                exit_code,
                checkpoint: 0,
                wait_hint: Duration::from_secs(10),
                process_id: None,
            })
        };
        report(
            ServiceState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
            ServiceExitCode::Win32(0),
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let result = rt.block_on(crate::gateway::run(settings, async move {
            let _ = stop_rx.await;
        }));
        // Non-zero when a task failed: the recovery actions restart us.
        let exit = match &result {
            Ok(()) => ServiceExitCode::Win32(0),
            Err(_) => ServiceExitCode::ServiceSpecific(1),
        };
        report(
            ServiceState::StopPending,
            ServiceControlAccept::empty(),
            ServiceExitCode::Win32(0),
        )?;
        drop(rt);
        report(ServiceState::Stopped, ServiceControlAccept::empty(), exit)?;
        result
    }
}
