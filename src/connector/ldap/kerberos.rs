//! SASL GSSAPI (Kerberos) binds with a keytab.
//!
//! Many AD sites forbid password binds for service accounts; a keytab (a gMSA's
//! or a service account's exported keys) signs in instead. The initiator
//! credentials come from GSSAPI's credential-store extension
//! (`gss_acquire_cred_from`, MIT krb5): the client keytab and a private
//! in-memory ticket cache are named per call, so no `kinit`, no environment
//! variable and no ticket file is involved, and two sources with two keytabs
//! never share a cache. The KDC is found the usual way (`/etc/krb5.conf`, or
//! `KRB5_CONFIG`, and DNS SRV records).

use std::ffi::CString;
use std::path::Path;

use libgssapi_sys as sys;

/// Initiator credentials for `principal` from the keytab at `keytab`, with a
/// fresh in-memory ticket cache. Tickets are obtained when the bind starts.
pub fn credentials(keytab: &Path, principal: &str) -> Result<libgssapi::credential::Cred, String> {
    let what = format!("keytab_file {}", keytab.display());
    // Read it once here: an unreadable keytab is named plainly, not as a GSSAPI status.
    std::fs::File::open(keytab).map_err(|e| format!("{what}: {e}"))?;
    crate::secure_fs::warn_if_readable_by_others(keytab, "keytab_file");
    let keytab_name = CString::new(format!("FILE:{}", keytab.display()))
        .map_err(|_| format!("{what}: the path contains a NUL byte"))?;
    let ccache = CString::new(format!("MEMORY:rcptsync-{}", crate::secure_fs::random_suffix()))
        .map_err(|_| "ccache name".to_string())?;
    let principal_c = CString::new(principal).map_err(|_| format!("principal {principal:?} contains a NUL byte"))?;
    let (k_keytab, k_ccache) = (c"client_keytab", c"ccache");
    let mut elements = [
        sys::gss_key_value_element_desc { key: k_keytab.as_ptr(), value: keytab_name.as_ptr() },
        sys::gss_key_value_element_desc { key: k_ccache.as_ptr(), value: ccache.as_ptr() },
    ];
    let store = sys::gss_key_value_set_desc { count: elements.len() as u32, elements: elements.as_mut_ptr() };
    let mut minor: sys::OM_uint32 = 0;
    let mut name: sys::gss_name_t = std::ptr::null_mut();
    let mut buffer = sys::gss_buffer_desc {
        length: principal_c.as_bytes().len(),
        value: principal_c.as_ptr() as *mut std::ffi::c_void,
    };
    // SAFETY: `buffer` points at `principal_c`, which outlives the call; the
    // name type is the library's own static; `name` receives a new name that
    // is released below.
    let major = unsafe { sys::gss_import_name(&mut minor, &mut buffer, sys::GSS_C_NT_USER_NAME, &mut name) };
    if major != 0 {
        return Err(format!("principal {principal:?} is not a Kerberos name: {}", status(major, minor)));
    }
    let mut cred: sys::gss_cred_id_t = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` was imported above,
    // `store` and its elements point at C strings that live until the end of
    // this function, and `cred` receives a credential handle whose ownership
    // passes to `libgssapi::credential::Cred` (released on drop).
    let major = unsafe {
        sys::gss_acquire_cred_from(
            &mut minor,
            name,
            sys::_GSS_C_INDEFINITE,
            std::ptr::null_mut(),
            sys::GSS_C_INITIATE as sys::gss_cred_usage_t,
            &store,
            &mut cred,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    let mut release_minor = 0;
    // SAFETY: `name` came from gss_import_name and is released once.
    unsafe { sys::gss_release_name(&mut release_minor, &mut name) };
    if major != 0 {
        return Err(format!(
            "no Kerberos credentials for {principal} from {what}: {} (check that the keytab holds keys for that \
             principal: klist -k)",
            status(major, minor)
        ));
    }
    Ok(libgssapi::credential::Cred::from(cred))
}

/// The host of an LDAP URL (`ldaps://dc1.example.com:636/` → `dc1.example.com`).
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6).to_string();
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_string()
}

/// GSSAPI's own words for a status.
fn status(major: u32, minor: u32) -> String {
    libgssapi::error::Error { major: libgssapi::error::MajorFlags::from_bits_retain(major), minor }.to_string()
}

/// Plain words for a failed GSSAPI bind: the usual causes and their fixes.
pub fn explain(error: &str, principal: &str, host: &str) -> String {
    let lower = error.to_ascii_lowercase();
    let hint = if lower.contains("not found in kerberos database") || lower.contains("server not found") {
        format!(
            " (the KDC knows no service ldap/{host}: set sasl_host to the DC's DNS name as in its \
             servicePrincipalName)"
        )
    } else if lower.contains("preauthentication failed") || lower.contains("decrypt integrity check failed") {
        format!(" (the keytab's keys for {principal} are out of date: export it again after a password change)")
    } else if lower.contains("cannot contact any kdc") || lower.contains("cannot find kdc") {
        " (no KDC reachable for the realm: check /etc/krb5.conf or the realm's DNS SRV records)".to_string()
    } else if lower.contains("clock skew") {
        " (this machine's clock is off: check NTP)".to_string()
    } else {
        String::new()
    };
    format!("Kerberos (GSSAPI) bind as {principal} failed: {error}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_urls_and_errors_name_the_fix() {
        assert_eq!(url_host("ldaps://dc1.example.com:636/"), "dc1.example.com");
        assert_eq!(url_host("ldap://dc1.example.com"), "dc1.example.com");
        assert_eq!(url_host("ldaps://[::1]:3269"), "::1");
        let e = explain(
            "Server ldap/127.0.0.1@EXAMPLE.TEST not found in Kerberos database",
            "svc@EXAMPLE.TEST",
            "127.0.0.1",
        );
        assert!(e.contains("set sasl_host"), "{e}");
        let e = explain("Preauthentication failed", "svc@EXAMPLE.TEST", "dc1");
        assert!(e.contains("export it again"), "{e}");
    }

    #[test]
    fn a_missing_keytab_is_named_plainly() {
        let e = credentials(Path::new("/nonexistent/rcptsync.keytab"), "svc@EXAMPLE.TEST").unwrap_err();
        assert!(e.contains("keytab_file /nonexistent/rcptsync.keytab") && e.contains("No such file"), "{e}");
    }
}
