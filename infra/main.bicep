// geoetl on Azure: storage (queues, tables, containers), a Flex Consumption Function App with a
// system-assigned identity, Key Vault for its secrets, Application Insights, and PostgreSQL Flexible
// Server with PostGIS + pgstac. `azd up` deploys it (azure.yaml at the repository root).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name: names the resource group and seeds every resource name.')
param environmentName string

@minLength(1)
@description('Azure region of every resource. It must offer the Flex Consumption plan and PostgreSQL Flexible Server.')
@metadata({ azd: { type: 'location' } })
param location string

@minLength(2)
@maxLength(8)
@description('Short prefix of resource names: lowercase letters and digits.')
param namePrefix string = 'geoetl'

@description('Resource group to create or reuse (default: rg-<environmentName>).')
param resourceGroupName string = ''

@description('Object id of the deploying user or service principal (azd fills it in). It may upload rasters and read the secrets azd reads back on the next provision. Empty: no roles for it.')
param principalId string = ''

// --- sizes
@allowed([512, 2048, 4096])
@description('Memory of one Function App instance (MB). COG conversion of large rasters wants 2048 or more.')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Most Function App instances the Flex Consumption plan scales out to.')
param maximumInstanceCount int = 40

@allowed(['Standard_GRS', 'Standard_GZRS', 'Standard_RAGRS', 'Standard_RAGZRS'])
@description('Replication of the storage account (jobs, tasks, rasters, COGs): geo-redundant.')
param storageSkuName string = 'Standard_GRS'

@description('Spread the Function App plan over availability zones (only where Flex Consumption offers it).')
param zoneRedundant bool = false

@description('PostgreSQL Flexible Server compute SKU, e.g. Standard_B1ms (Burstable) or Standard_D2ds_v5 (GeneralPurpose).')
param postgresSkuName string = 'Standard_B1ms'

@allowed(['Burstable', 'GeneralPurpose', 'MemoryOptimized'])
@description('Tier of postgresSkuName.')
param postgresSkuTier string = 'Burstable'

@allowed([32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384])
@description('PostgreSQL storage (GiB); it grows automatically past this.')
param postgresStorageSizeGB int = 32

@allowed(['15', '16'])
@description('PostgreSQL major version (PostGIS is available on both).')
param postgresVersion string = '16'

@description('Keep PostgreSQL backups in the paired region as well (doubles backup storage).')
param postgresGeoRedundantBackup bool = false

@description('PostgreSQL administrator login; the app connects as this user (PGSTAC_USER).')
param postgresAdminLogin string = 'geoetladmin'

@secure()
@description('PostgreSQL administrator password, kept in Key Vault (PGSTAC_PASSWORD). azd reads it back from the vault, or generates one the first time.')
param postgresAdminPassword string

@secure()
@description('HMAC-SHA256 key signing webhook deliveries, kept in Key Vault (WEBHOOK_SECRET). azd reads it back from the vault, or generates one the first time.')
param webhookSecret string

@description('pypgstac version whose migrations the deployment script applies; keep it equal to requirements.txt.')
param pypgstacVersion string = '0.10.0'

// --- names: one token per subscription + environment + region keeps them unique and stable
var token = toLower(uniqueString(subscription().id, environmentName, location))
var prefix = toLower(replace(namePrefix, '-', ''))
var tags = { 'azd-env-name': environmentName, app: 'geoetl' }
var names = {
  resourceGroup: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  storage: take('st${prefix}${token}', 24)
  keyVault: take('kv-${prefix}-${token}', 24)
  logAnalytics: 'log-${prefix}-${token}'
  appInsights: 'appi-${prefix}-${token}'
  plan: 'plan-${prefix}-${token}'
  functionApp: 'func-${prefix}-${token}'
  postgres: 'psql-${prefix}-${token}'
}

// What the app stores, with config.py's default names (JOBS_QUEUE, TASKS_QUEUE, JOBS_TABLE, TASKS_TABLE,
// SCHEDULES_TABLE, PAYLOAD_CONTAINER, INPUT_CONTAINER, OUTPUT_CONTAINER). The Functions host creates its own
// azure-webjobs-* containers; the deployment container holds the app package.
var storageNames = {
  jobsQueue: 'geoetl-jobs'
  tasksQueue: 'geoetl-tasks'
  jobsTable: 'geoetljobs'
  tasksTable: 'geoetltasks'
  schedulesTable: 'geoetlschedules'
  payloadContainer: 'geoetl-payloads'
  inputContainer: 'rasters'
  outputContainer: 'cogs'
  deploymentContainer: 'app-package'
}
var pgstacDatabase = 'pgstac'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: names.logAnalytics
    appInsightsName: names.appInsights
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: names.storage
    skuName: storageSkuName
    queues: [storageNames.jobsQueue, '${storageNames.jobsQueue}-poison', storageNames.tasksQueue, '${storageNames.tasksQueue}-poison']
    tables: [storageNames.jobsTable, storageNames.tasksTable, storageNames.schedulesTable]
    containers: [storageNames.inputContainer, storageNames.outputContainer, storageNames.payloadContainer, storageNames.deploymentContainer]
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: names.keyVault
    pgstacPassword: postgresAdminPassword
    webhookSecret: webhookSecret
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  scope: rg
  params: {
    location: location
    tags: tags
    name: names.postgres
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    storageSizeGB: postgresStorageSizeGB
    version: postgresVersion
    geoRedundantBackup: postgresGeoRedundantBackup
    adminLogin: postgresAdminLogin
    adminPassword: postgresAdminPassword
    databaseName: pgstacDatabase
    pypgstacVersion: pypgstacVersion
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    tags: tags
    planName: names.plan
    zoneRedundant: zoneRedundant
    name: names.functionApp
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    storageAccountName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    storageNames: storageNames
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    pgstacHost: postgres.outputs.host
    pgstacDatabase: pgstacDatabase
    pgstacUser: postgresAdminLogin
    pgstacPasswordSecretUri: keyVault.outputs.pgstacPasswordSecretUri
    webhookSecretUri: keyVault.outputs.webhookSecretUri
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    appPrincipalId: functionApp.outputs.principalId
    deployerPrincipalId: principalId
  }
}

// azd stores these in .azure/<env>/.env; GEOETL_URL is what ./cli.py reads.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output GEOETL_URL string = functionApp.outputs.apiBaseUrl
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output POSTGRES_SERVER_NAME string = postgres.outputs.name
output POSTGRES_HOST string = postgres.outputs.host
output POSTGRES_DATABASE string = pgstacDatabase
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.appInsightsName
output LOG_ANALYTICS_WORKSPACE_NAME string = monitoring.outputs.logAnalyticsName
