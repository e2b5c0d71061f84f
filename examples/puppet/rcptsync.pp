# Puppet: sync only when a dry run says something would change. The `unless`
# command exits 0 when nothing would change, so the exec then does nothing.
exec { 'rcptsync sync':
  command => '/usr/bin/rcptsync sync -c /etc/rcptsync/rcptsync.toml',
  unless  => '/usr/bin/rcptsync sync --dry-run --detailed-exitcode -c /etc/rcptsync/rcptsync.toml',
  user    => 'rcptsync',
  require => File['/etc/rcptsync/rcptsync.toml'],
}

file { '/etc/rcptsync/rcptsync.toml':
  ensure       => file,
  owner        => 'root',
  group        => 'rcptsync',
  mode         => '0640',
  content      => template('rcptsync/rcptsync.toml.erb'),
  validate_cmd => '/usr/bin/rcptsync check --offline -c %',
}
