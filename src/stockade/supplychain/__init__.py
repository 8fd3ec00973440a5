"""Supply chain: signed packages and catalogs, safe zips, node SSH keys, AppLocker rules.

Public surface (everything else is private to its module)::

    load_certificate(pfx, password)        -> CodeSigningCertificate (checked: validity, EKU)
    build_package(src, out, cert, ...)      -> BuildSummary     sign, catalog, deterministic zip
    create_catalog(root, cert, ...)         -> Catalog          catalog.json + catalog.json.p7s
    verify_package(zip_or_dir, ca=...)      -> VerifyReport     every problem by path
    safe_extract(zip, target, limits)       -> names            refuses traversal, links, bombs

    build_policy / merge_policy / policy_xml  AppLocker policy with Windows' default rules
    generate_keypair, add_authorized_keys, harden_node, ...  node SSH keys over OpenSSH

Programs used at the edge: ``osslsigncode`` (Authenticode), ``openssl cms`` (catalog signature).
"""

from ._applocker import (
    build_policy,
    load_signer_certificate,
    merge_policy,
    parse_collections,
    parse_policy,
    path_rule,
    policy_xml,
    publisher_name,
    publisher_rule,
)
from ._catalog import Catalog, CatalogEntry
from ._nodekeys import (
    AuthorizedKey,
    KeyPair,
    SshTarget,
    add_authorized_keys,
    check_name,
    generate_keypair,
    harden_node,
    list_authorized_keys,
    load_public_key,
    node_key_comment,
    remove_tagged_keys,
    user_tag,
)
from ._package import (
    BuildSummary,
    Problem,
    Progress,
    VerifyReport,
    build_package,
    create_catalog,
    verify_package,
)
from ._select import ExclusionList, is_signable
from ._signing import CodeSigningCertificate, Osslsigncode, load_certificate, read_password
from ._zipsafe import UnsafeArchive, ZipLimits, safe_extract, write_deterministic_zip

__all__ = [
    "AuthorizedKey",
    "BuildSummary",
    "Catalog",
    "CatalogEntry",
    "CodeSigningCertificate",
    "ExclusionList",
    "KeyPair",
    "Osslsigncode",
    "Problem",
    "Progress",
    "SshTarget",
    "UnsafeArchive",
    "VerifyReport",
    "ZipLimits",
    "add_authorized_keys",
    "build_package",
    "build_policy",
    "check_name",
    "create_catalog",
    "generate_keypair",
    "harden_node",
    "is_signable",
    "list_authorized_keys",
    "load_certificate",
    "load_public_key",
    "load_signer_certificate",
    "merge_policy",
    "node_key_comment",
    "parse_collections",
    "parse_policy",
    "path_rule",
    "policy_xml",
    "publisher_name",
    "publisher_rule",
    "read_password",
    "remove_tagged_keys",
    "safe_extract",
    "user_tag",
    "verify_package",
    "write_deterministic_zip",
]
