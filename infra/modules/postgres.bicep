// PostgreSQL Flexible Server for the STAC catalogue: the extensions pgstac creates are allow-listed
// (azure.extensions), the pgstac database exists, and a deployment script runs `pypgstac migrate` once
// per pypgstac version (the script is idempotent: a second run finds the schema current).
@description('Region.')
param location string

@description('Tags of every resource.')
param tags object

@description('Server name.')
param name string

@description('Compute SKU name.')
param skuName string

@description('Compute tier.')
param skuTier string

@description('Storage (GiB).')
param storageSizeGB int

@description('PostgreSQL major version.')
param version string

@description('Geo-redundant backups.')
param geoRedundantBackup bool

@description('Administrator login.')
param adminLogin string

@secure()
@description('Administrator password.')
param adminPassword string

@description('Database holding the pgstac schema.')
param databaseName string

@description('pypgstac version the migration script installs.')
param pypgstacVersion string

@description('Azure CLI image of the deployment script.')
param azCliVersion string = '2.67.0'

// pgstac's migrations run CREATE EXTENSION for exactly these (pypgstac/migrations/pgstac.*.sql).
var pgstacExtensions = 'POSTGIS,BTREE_GIST,UNACCENT'

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: skuTier
  }
  properties: {
    version: version
    administratorLogin: adminLogin
    administratorLoginPassword: adminPassword
    authConfig: {
      passwordAuth: 'Enabled'
      activeDirectoryAuth: 'Disabled'
    }
    storage: {
      storageSizeGB: storageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 7
      geoRedundantBackup: geoRedundantBackup ? 'Enabled' : 'Disabled'
    }
    highAvailability: { mode: 'Disabled' }
    network: { publicNetworkAccess: 'Enabled' }
  }
}

// Server parameters are applied one at a time (the server rejects concurrent updates).
resource extensions 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'azure.extensions'
  properties: {
    value: pgstacExtensions
    source: 'user-defined'
  }
}

resource secureTransport 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'require_secure_transport'
  properties: {
    value: 'on'
    source: 'user-defined'
  }
  dependsOn: [extensions]
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
  dependsOn: [secureTransport]
}

// The Flex Consumption app (no VNet) and the deployment script's container reach the server from Azure
// addresses. This rule admits Azure addresses (any tenant's) and nothing else; TLS and the password guard
// the rest. Clients outside Azure get no rule (add one for your address to run psql).
resource allowAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = {
  parent: server
  name: 'AllowAllAzureServicesAndResourcesWithinAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
  dependsOn: [database]
}

// Runs scripts/pgstac-migrate.sh in a short-lived Azure CLI container. forceUpdateTag = the pypgstac
// version, so it runs again only when that changes (or after Azure removed the finished script resource).
resource pgstacMigrate 'Microsoft.Resources/deploymentScripts@2023-08-01' = {
  name: 'pgstac-migrate'
  location: location
  tags: tags
  kind: 'AzureCLI'
  properties: {
    azCliVersion: azCliVersion
    forceUpdateTag: pypgstacVersion
    retentionInterval: 'P1D'
    cleanupPreference: 'OnSuccess'
    timeout: 'PT30M'
    environmentVariables: [
      { name: 'PGHOST', value: server.properties.fullyQualifiedDomainName }
      { name: 'PGPORT', value: '5432' }
      { name: 'PGDATABASE', value: databaseName }
      { name: 'PGUSER', value: adminLogin }
      { name: 'PGPASSWORD', secureValue: adminPassword }
      { name: 'PGSSLMODE', value: 'require' }
      { name: 'PYPGSTAC_VERSION', value: pypgstacVersion }
    ]
    scriptContent: loadTextContent('../scripts/pgstac-migrate.sh')
  }
  dependsOn: [extensions, database, allowAzure]
}

output name string = server.name
output host string = server.properties.fullyQualifiedDomainName
